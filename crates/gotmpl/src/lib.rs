//! Layer: pure logic. Go's `text/template` language, evaluated over JSON data.
//!
//! Weave's `weave report -f TEMPLATE` and `GET /report?format=TEMPLATE` run a Go template over
//! the router's status report; scripts written for Weave use them (`{{.Router.Name}}`,
//! `{{range .Router.Connections}}...{{end}}`, `{{len .DNS.Entries}}`, `{{json .DNS}}`). This crate
//! parses such templates and evaluates them over a [`Value`] (JSON with its key order kept), with
//! Go's semantics as `text/template` documents them. It is sans-IO: the text comes in, a
//! `String` or an [`Error`] goes out. Templates arrive over HTTP, so parsing and evaluation are
//! bounded ([`Limits`]) and never panic (there is a fuzz target).
//!
//! What is implemented: text and actions with `{{-`/`-}}` trimming and `{{/* comments */}}`;
//! pipelines with `|`; field chains (`.A.B`, `$x.A`, `(pipeline).A`); variables (`$`, `$x :=`,
//! `$x =`, scoped as in Go); string, raw string, character, number, `true`/`false`/`nil`
//! literals; `if`/`else if`/`else`, `with`/`else with`/`else`, `range` (one or two variables,
//! `else`, `break`, `continue`), `define`, `template`, `block`; the built-in functions `and`,
//! `or`, `not`, `len`, `index`, `slice`, `print`, `printf`, `println`, `eq`, `ne`, `lt`, `le`,
//! `gt`, `ge`, `html`, `js`, `urlquery`, `call` (there are no function values, so it always
//! fails); and caller-supplied functions such as Weave's `json` ([`json`]).
//!
//! How JSON maps onto Go's types:
//! - An object whose keys all start with an upper-case ASCII letter was a Go struct (only exported
//!   fields are reachable from templates and they are capitalised): asking for a field it lacks is
//!   an error, as `can't evaluate field` is in Go. Any other object was a Go map: a missing key
//!   gives the zero value (printed `<no value>`), and `range` visits its keys in sorted order.
//! - `null` is a nil pointer, slice or map: false in `if`, no iterations in `range`, length 0 in
//!   `len`, and an error when a field of it is asked for.
//! - Integers are Go `int`s (or `uint` beyond `i64`), numbers with a fraction or exponent are
//!   `float64`s; printing follows `fmt`'s `%v` (`1e+06`, not `1000000.0`).
//!
//! Not implemented (an error, never silently different): methods on values, `range` over an
//! integer (Go 1.22), complex numbers, hexadecimal floating-point literals, custom delimiters.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod exec;
mod fmt;
mod funcs;
mod lex;
mod parse;
mod value;

use std::collections::BTreeMap;

pub use funcs::json;
pub use value::Value;

/// A function a template may call by name, beside the built-ins: it gets the evaluated
/// arguments and returns a value or an error message.
pub type Func = fn(&[&Value]) -> Result<Value, String>;

/// Functions a template may call beyond the built-ins.
#[derive(Clone, Debug, Default)]
pub struct Funcs {
    map: BTreeMap<String, Func>,
}

impl Funcs {
    /// No functions beyond the built-ins.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the function `name`.
    #[must_use]
    pub fn with(mut self, name: &str, f: Func) -> Self {
        self.map.insert(name.to_owned(), f);
        self
    }

    pub(crate) fn get(&self, name: &str) -> Option<Func> {
        self.map.get(name).copied()
    }
}

/// Bounds on one execution, so a template from the network cannot take the host down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of output.
    pub max_output: usize,
    /// Most evaluation steps (nodes walked and commands run).
    pub max_steps: u64,
    /// Deepest nesting of `{{template}}` calls.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_output: 1 << 20,
            max_steps: 1_000_000,
            max_depth: 100,
        }
    }
}

/// Which stage refused the template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The text is not a valid template.
    Parse,
    /// Evaluation failed (a missing field, a bad argument, ...).
    Exec,
    /// Evaluation hit one of the [`Limits`].
    Limit,
}

/// Why a template could not be parsed or evaluated. The message reads like Go's
/// (`template: format:1: function "x" not defined`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: String) -> Self {
        Self { kind, message }
    }

    /// Which stage failed.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// A parsed template, ready to run over any number of values.
#[derive(Clone, Debug)]
pub struct Template {
    name: String,
    src: String,
    root: Vec<parse::Node>,
    defs: BTreeMap<String, Vec<parse::Node>>,
    funcs: Funcs,
}

impl Template {
    /// Parses `text` with only the built-in functions; `name` appears in error messages.
    pub fn parse(name: &str, text: &str) -> Result<Self, Error> {
        Self::parse_with(name, text, Funcs::new())
    }

    /// Parses `text`, which may also call `funcs`.
    pub fn parse_with(name: &str, text: &str, funcs: Funcs) -> Result<Self, Error> {
        let parsed = parse::parse(name, text, &funcs)?;
        Ok(Self {
            name: name.to_owned(),
            src: text.to_owned(),
            root: parsed.root,
            defs: parsed.defs,
            funcs,
        })
    }

    /// Runs the template over `data` with the default [`Limits`].
    pub fn execute(&self, data: &Value) -> Result<String, Error> {
        self.execute_with(data, Limits::default())
    }

    /// Runs the template over `data` within `limits`.
    pub fn execute_with(&self, data: &Value, limits: Limits) -> Result<String, Error> {
        exec::execute(self, data, limits)
    }
}

#[cfg(test)]
mod tests;
