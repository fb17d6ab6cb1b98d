//! Upstream path templates such as `/things/{thing_id}`, parsed once when
//! configuration loads.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

/// One piece of a path template: literal text or a `{name}` placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Literal(String),
    Param(String),
}

/// A parsed path template such as `/things/{thing_id}`. Configuration
/// deserialises `integrations.NAME.operations.OP.path` (and query paths)
/// straight into it, so a bad template fails at load, naming the key, and
/// nothing parses a template again at run time. It displays as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct PathTemplate(pub(crate) Vec<Segment>);

impl TryFrom<String> for PathTemplate {
    type Error = String;

    fn try_from(template: String) -> Result<PathTemplate, String> {
        PathTemplate::parse(&template)
    }
}

impl FromStr for PathTemplate {
    type Err = String;

    fn from_str(template: &str) -> Result<PathTemplate, String> {
        PathTemplate::parse(template)
    }
}

impl fmt::Display for PathTemplate {
    /// The template as written (`/things/{thing_id}`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for segment in &self.0 {
            match segment {
                Segment::Literal(text) => f.write_str(text)?,
                Segment::Param(name) => write!(f, "{{{name}}}")?,
            }
        }
        Ok(())
    }
}

impl PathTemplate {
    /// Parses a template: starts with `/`; `{name}` placeholders with names of
    /// letters, digits and `_`; no stray braces.
    ///
    /// # Errors
    /// A sentence saying what is wrong.
    pub fn parse(template: &str) -> Result<Self, String> {
        if !template.starts_with('/') {
            return Err("must start with '/'".into());
        }
        let mut segments = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find(['{', '}']) {
            if rest.as_bytes()[open] == b'}' {
                return Err("has a '}' without '{'".into());
            }
            let close = rest[open..]
                .find('}')
                .map(|c| open + c)
                .ok_or_else(|| "has a '{' without '}'".to_owned())?;
            let name = &rest[open + 1..close];
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!(
                    "placeholder '{{{name}}}' must be letters, digits and '_'"
                ));
            }
            if open > 0 {
                segments.push(Segment::Literal(rest[..open].to_owned()));
            }
            segments.push(Segment::Param(name.to_owned()));
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Literal(rest.to_owned()));
        }
        Ok(PathTemplate(segments))
    }

    /// The placeholder names, in order.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|s| match s {
            Segment::Param(p) => Some(p.as_str()),
            Segment::Literal(_) => None,
        })
    }
}
