//! The Dockerfile frontend, pure and BuildKit-compatible: source text to
//! instructions (`parser`), word expansion (`expand`) and `.dockerignore` rules
//! (`ignore`). Nothing here touches files; callers pass text in.

mod expand;
mod ignore;
mod parser;

pub use expand::{ExpandError, expand_word, expand_words};
pub use ignore::{Ignore, IgnoreError};
pub use parser::{Dockerfile, Flag, Heredoc, Instruction, ParseError, parse};
