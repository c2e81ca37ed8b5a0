//! What a handler sees of the build: the variables in scope for word
//! expansion and the context tree, answered through the `host` import.

use crate::context::ContextTree;
use crate::dockerfile::{expand_word, expand_words};
use crate::plugin::{HandlerHost, HostFileStat};
use std::collections::HashMap;
use std::sync::Arc;

/// Variables visible to one instruction's expansion: the ARGs in scope
/// (with values), overridden by the image's ENV, as Docker does.
#[derive(Clone, Debug, Default)]
pub struct Vars {
    values: HashMap<String, String>,
}

impl Vars {
    /// Builds the scope from ARG values and ENV pairs; ENV wins.
    pub fn new<'a>(
        args: impl IntoIterator<Item = (&'a str, &'a str)>,
        env: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Vars {
        let mut values = HashMap::new();
        for (k, v) in args.into_iter().chain(env) {
            values.insert(k.to_owned(), v.to_owned());
        }
        Vars { values }
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<String> {
        self.values.get(name).cloned()
    }
}

/// The `host` import's answers for one handler call.
pub struct Host {
    pub vars: Vars,
    pub escape: char,
    pub context: Arc<ContextTree>,
}

impl HandlerHost for Host {
    fn expand(&self, word: &str) -> Result<String, String> {
        expand_word(word, &|n| self.vars.get(n), self.escape).map_err(|e| e.to_string())
    }

    fn expand_words(&self, text: &str) -> Result<Vec<String>, String> {
        expand_words(text, &|n| self.vars.get(n), self.escape).map_err(|e| e.to_string())
    }

    fn context_stat(&self, path: &str) -> Option<HostFileStat> {
        let s = self.context.stat(path)?;
        Some(HostFileStat {
            kind: s.kind,
            size: s.size,
            mode: s.mode,
        })
    }

    fn context_glob(&self, pattern: &str) -> Result<Vec<String>, String> {
        self.context.glob(pattern).map_err(|e| e.to_string())
    }

    fn context_read(&self, path: &str) -> Result<Vec<u8>, String> {
        self.context.read_small(path).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_args() {
        let v = Vars::new([("A", "arg"), ("B", "b")], [("A", "env")]);
        assert_eq!(v.get("A").as_deref(), Some("env"));
        assert_eq!(v.get("B").as_deref(), Some("b"));
        assert_eq!(v.get("C"), None);
    }
}
