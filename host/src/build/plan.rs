//! The stage graph: which stages exist, which stages each one reads from
//! (`FROM <stage>`, `COPY --from`, `RUN --mount=from=`), which ones the
//! target needs, and in which waves they can be built in parallel.
//!
//! Pure: the caller supplies each stage's parsed FROM and a way to expand
//! flag values.

use crate::dockerfile::Instruction;
use std::collections::BTreeSet;

/// A stage as the Dockerfile declares it.
#[derive(Debug)]
pub struct StagePlan<'d> {
    pub index: usize,
    /// Lower-cased `AS` name.
    pub name: Option<String>,
    /// The base: an image reference, `scratch` or another stage's name.
    pub base: String,
    pub from: &'d Instruction,
    pub body: Vec<&'d Instruction>,
    /// Indexes of the stages this one reads from.
    pub deps: BTreeSet<usize>,
}

/// Graph failures.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("stage {0:?} is referenced but not defined in the Dockerfile")]
    UnknownStage(String),
    #[error("stage {reference:?} refers to itself")]
    SelfReference { reference: String },
    #[error("stages {0} depend on each other in a cycle")]
    Cycle(String),
    #[error("target stage {0:?} could not be found")]
    NoTarget(String),
}

/// Splits instructions into the global part (before the first FROM) and
/// one slice per stage, each starting with its FROM.
pub fn split(instructions: &[Instruction]) -> (Vec<&Instruction>, Vec<Vec<&Instruction>>) {
    let mut globals = Vec::new();
    let mut stages: Vec<Vec<&Instruction>> = Vec::new();
    for i in instructions {
        if i.keyword == "FROM" {
            stages.push(vec![i]);
        } else if let Some(current) = stages.last_mut() {
            current.push(i);
        } else {
            globals.push(i);
        }
    }
    (globals, stages)
}

/// What a `--from` value names.
#[derive(Debug, PartialEq, Eq)]
pub enum FromRef {
    Stage(usize),
    Image(String),
}

/// Resolves a `--from` (or FROM base) value against the stages declared
/// so far, as BuildKit does: a stage name, a stage index, or else an image.
pub fn resolve_from(
    value: &str,
    names: &[Option<String>],
    current: usize,
) -> Result<FromRef, PlanError> {
    let lower = value.to_ascii_lowercase();
    if let Some(idx) = names
        .iter()
        .position(|n| n.as_deref() == Some(lower.as_str()))
    {
        if idx == current {
            return Err(PlanError::SelfReference {
                reference: value.into(),
            });
        }
        return Ok(FromRef::Stage(idx));
    }
    if let Ok(idx) = value.parse::<usize>() {
        if idx >= names.len() {
            return Err(PlanError::UnknownStage(value.into()));
        }
        if idx == current {
            return Err(PlanError::SelfReference {
                reference: value.into(),
            });
        }
        return Ok(FromRef::Stage(idx));
    }
    Ok(FromRef::Image(value.into()))
}

/// The `from` values an instruction reads from: `COPY --from=X` and
/// `RUN --mount=...,from=X`, unexpanded.
pub fn from_values(i: &Instruction) -> Vec<String> {
    let mut out = Vec::new();
    for f in &i.flags {
        let Some(v) = &f.value else { continue };
        match (i.keyword.as_str(), f.name.as_str()) {
            ("COPY" | "ADD", "from") => out.push(v.clone()),
            ("RUN", "mount") => {
                for field in v.split(',') {
                    if let Some(x) = field.trim().strip_prefix("from=") {
                        out.push(x.to_owned());
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Fills every stage's `deps`; `expand` expands a `--from` value. An error
/// comes with the instruction that caused it.
pub fn link<'d>(
    stages: &mut [StagePlan<'d>],
    expand: &dyn Fn(&str) -> String,
) -> Result<(), (PlanError, &'d Instruction)> {
    let names: Vec<Option<String>> = stages.iter().map(|s| s.name.clone()).collect();
    for s in stages.iter_mut() {
        let mut deps = BTreeSet::new();
        // FROM only sees stages declared before it, as in BuildKit.
        if let Some(idx) = names[..s.index]
            .iter()
            .position(|n| n.as_deref() == Some(s.base.to_ascii_lowercase().as_str()))
        {
            deps.insert(idx);
        }
        for &instr in &s.body {
            for value in from_values(instr) {
                let resolved =
                    resolve_from(&expand(&value), &names, s.index).map_err(|e| (e, instr))?;
                if let FromRef::Stage(idx) = resolved {
                    deps.insert(idx);
                }
            }
        }
        s.deps = deps;
    }
    Ok(())
}

/// The stages the target (by name or index; `None` is the last stage)
/// needs, itself included.
pub fn needed(
    stages: &[StagePlan<'_>],
    target: Option<&str>,
) -> Result<(usize, Vec<bool>), PlanError> {
    let target_idx = match target {
        None => stages
            .len()
            .checked_sub(1)
            .ok_or_else(|| PlanError::NoTarget(String::new()))?,
        Some(t) => stages
            .iter()
            .position(|s| s.name.as_deref() == Some(t.to_ascii_lowercase().as_str()))
            .ok_or_else(|| PlanError::NoTarget(t.into()))?,
    };
    let mut need = vec![false; stages.len()];
    let mut todo = vec![target_idx];
    while let Some(i) = todo.pop() {
        if !std::mem::replace(&mut need[i], true) {
            todo.extend(stages[i].deps.iter().copied());
        }
    }
    Ok((target_idx, need))
}

/// Groups the needed stages into waves: every stage's dependencies are in
/// earlier waves, so the stages of one wave can build in parallel.
pub fn waves(stages: &[StagePlan<'_>], need: &[bool]) -> Result<Vec<Vec<usize>>, PlanError> {
    let mut level: Vec<Option<usize>> = vec![None; stages.len()];
    let mut remaining: Vec<usize> = (0..stages.len()).filter(|&i| need[i]).collect();
    let mut out: Vec<Vec<usize>> = Vec::new();
    while !remaining.is_empty() {
        let ready: Vec<usize> = remaining
            .iter()
            .copied()
            .filter(|&i| stages[i].deps.iter().all(|d| level[*d].is_some()))
            .collect();
        if ready.is_empty() {
            let names: Vec<String> = remaining.iter().map(|&i| stage_label(&stages[i])).collect();
            return Err(PlanError::Cycle(names.join(", ")));
        }
        for &i in &ready {
            level[i] = Some(out.len());
        }
        remaining.retain(|i| !ready.contains(i));
        out.push(ready);
    }
    Ok(out)
}

/// How logs name a stage: its name, or its index.
pub fn stage_label(s: &StagePlan<'_>) -> String {
    s.name.clone().unwrap_or_else(|| s.index.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerfile::parse;

    fn plans<'d>(df: &'d crate::dockerfile::Dockerfile) -> Vec<StagePlan<'d>> {
        let (_, stages) = split(&df.instructions);
        stages
            .into_iter()
            .enumerate()
            .map(|(index, body)| {
                let words: Vec<&str> = body[0].text.split_whitespace().collect();
                let name = (words.len() == 3).then(|| words[2].to_ascii_lowercase());
                StagePlan {
                    index,
                    name,
                    base: words[0].into(),
                    from: body[0],
                    body: body[1..].to_vec(),
                    deps: BTreeSet::new(),
                }
            })
            .collect()
    }

    const DF: &str = "ARG V=1\nFROM alpine AS base\nRUN x\nFROM base AS a\nRUN a\nFROM busybox AS b\nCOPY --from=0 /x /x\nFROM scratch AS unused\nFROM scratch\nCOPY --from=a /a /a\nCOPY --from=${B} /b /b\nRUN --mount=type=cache,target=/c,from=base true\nCOPY --from=docker.io/library/alpine /etc/os-release /\n";

    #[test]
    fn dependencies_needed_stages_and_waves() {
        let df = parse(DF).unwrap();
        let (globals, _) = split(&df.instructions);
        assert_eq!(globals.len(), 1);
        let mut stages = plans(&df);
        link(&mut stages, &|v| v.replace("${B}", "b")).unwrap();
        let deps: Vec<Vec<usize>> = stages
            .iter()
            .map(|s| s.deps.iter().copied().collect())
            .collect();
        assert_eq!(deps, vec![vec![], vec![0], vec![0], vec![], vec![0, 1, 2]]);
        let (target, need) = needed(&stages, None).unwrap();
        assert_eq!(target, 4);
        assert_eq!(need, vec![true, true, true, false, true]);
        assert_eq!(
            waves(&stages, &need).unwrap(),
            vec![vec![0], vec![1, 2], vec![4]]
        );
        let (t, need) = needed(&stages, Some("A")).unwrap();
        assert_eq!((t, need), (1, vec![true, true, false, false, false]));
        assert_eq!(
            needed(&stages, Some("nope")).unwrap_err(),
            PlanError::NoTarget("nope".into())
        );
    }

    #[test]
    fn from_values_resolve_to_stages_indexes_or_images() {
        let names = vec![Some("build".to_owned()), None];
        assert_eq!(resolve_from("BUILD", &names, 1).unwrap(), FromRef::Stage(0));
        assert_eq!(resolve_from("0", &names, 1).unwrap(), FromRef::Stage(0));
        assert_eq!(
            resolve_from("alpine:3", &names, 1).unwrap(),
            FromRef::Image("alpine:3".into())
        );
        assert!(matches!(
            resolve_from("5", &names, 1),
            Err(PlanError::UnknownStage(_))
        ));
        assert!(matches!(
            resolve_from("1", &names, 1),
            Err(PlanError::SelfReference { .. })
        ));
    }

    #[test]
    fn cycles_are_reported() {
        let df =
            parse("FROM scratch AS a\nCOPY --from=b / /\nFROM scratch AS b\nCOPY --from=a / /\n")
                .unwrap();
        let mut stages = plans(&df);
        link(&mut stages, &|v| v.to_owned()).unwrap();
        let (_, need) = needed(&stages, None).unwrap();
        assert!(matches!(waves(&stages, &need), Err(PlanError::Cycle(_))));
    }
}
