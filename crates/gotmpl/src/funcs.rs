//! The built-in functions (Go's `text/template/funcs.go`) that take evaluated arguments, and
//! Weave's `json`. `and`, `or` (short-circuit) and `index` (keeps borrowing the data) live in
//! the evaluator.

use std::fmt::Write as _;

use crate::fmt::{sprint, sprintf, sprintln};
use crate::value::Value;

/// Why a call failed: the wrong number of arguments (reported as is), or the function itself
/// failed (reported as `error calling NAME: ...`).
pub(crate) enum CallError {
    Arity(String),
    Failed(String),
}

fn arity(name: &str, want: usize, got: usize) -> CallError {
    CallError::Arity(format!(
        "wrong number of args for {name}: want {want} got {got}"
    ))
}

fn at_least(name: &str, want: usize, got: usize) -> CallError {
    CallError::Arity(format!(
        "wrong number of args for {name}: want at least {want} got {got}"
    ))
}

/// Weave's `json` template function: the argument as compact JSON (Go's `json.Marshal`; an
/// empty string where that fails, as Weave ignores the error).
pub fn json(args: &[&Value]) -> Result<Value, String> {
    match args {
        [v] => Ok(Value::String(v.to_go_json().unwrap_or_default())),
        _ => Err(format!(
            "wrong number of args for json: want 1 got {}",
            args.len()
        )),
    }
}

/// Calls built-in `name`; `None` if there is no such built-in here.
pub(crate) fn builtin(name: &str, args: &[&Value]) -> Option<Result<Value, CallError>> {
    let n = args.len();
    let r = match name {
        "len" => match args {
            [v] => length(v).map(Value::Int).map_err(CallError::Failed),
            _ => Err(arity(name, 1, n)),
        },
        "not" => match args {
            [v] => Ok(Value::Bool(!v.truth())),
            _ => Err(arity(name, 1, n)),
        },
        "call" => match args {
            [] => Err(at_least(name, 1, 0)),
            [f, ..] => Err(CallError::Failed(format!(
                "non-function of type {}",
                f.type_name()
            ))),
        },
        "print" => Ok(Value::String(sprint(args))),
        "println" => Ok(Value::String(sprintln(args))),
        "printf" => match args {
            [] => Err(at_least(name, 1, 0)),
            [Value::String(f), rest @ ..] => Ok(Value::String(sprintf(f, rest))),
            [other, ..] => Err(CallError::Failed(format!(
                "wrong type for value; expected string; got {}",
                other.type_name()
            ))),
        },
        "html" => Ok(Value::String(html(&text_of(args)))),
        "js" => Ok(Value::String(js(&text_of(args)))),
        "urlquery" => Ok(Value::String(urlquery(&text_of(args)))),
        "slice" => match args {
            [] => Err(at_least(name, 1, 0)),
            [item, idx @ ..] => slice(item, idx).map_err(CallError::Failed),
        },
        "eq" => match args {
            [] => Err(at_least(name, 1, 0)),
            [_] => Err(CallError::Failed("missing argument for comparison".into())),
            [a, rest @ ..] => {
                let mut r = Ok(Value::Bool(false));
                for b in rest {
                    match eq(a, b) {
                        Ok(true) => {
                            r = Ok(Value::Bool(true));
                            break;
                        }
                        Ok(false) => {}
                        Err(e) => {
                            r = Err(CallError::Failed(e));
                            break;
                        }
                    }
                }
                r
            }
        },
        "ne" | "lt" | "le" | "gt" | "ge" => match args {
            [a, b] => {
                let r = match name {
                    "ne" => eq(a, b).map(|x| !x),
                    "lt" => lt(a, b),
                    "le" => lt(a, b).and_then(|l| Ok(l || eq(a, b)?)),
                    "gt" => lt(a, b).and_then(|l| Ok(!l && !eq(a, b)?)),
                    _ => lt(a, b).map(|l| !l),
                };
                r.map(Value::Bool).map_err(CallError::Failed)
            }
            _ => Err(arity(name, 2, n)),
        },
        _ => return None,
    };
    Some(r)
}

/// `len`: bytes of a string, elements of a slice or map; a nil slice has none.
fn length(v: &Value) -> Result<i64, String> {
    let n = match v {
        Value::String(s) => s.len(),
        Value::List(l) => l.len(),
        Value::Object(m) if !v.is_struct() => m.len(),
        Value::Nil | Value::NoValue => 0,
        other => return Err(format!("len of type {}", other.type_name())),
    };
    Ok(i64::try_from(n).unwrap_or(i64::MAX))
}

/// The argument as text for the escapers: a lone string as it is, else `fmt.Sprint`.
fn text_of(args: &[&Value]) -> String {
    match args {
        [Value::String(s)] => s.clone(),
        _ => sprint(args),
    }
}

fn html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\0' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

fn js(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '<' | '>' | '&' | '=' => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c if c < ' ' || c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

fn urlquery(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char);
            }
            b' ' => out.push('+'),
            b => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// An integer argument used as an index.
pub(crate) fn index_of(v: &Value) -> Result<i64, String> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::Uint(u) => Ok(i64::try_from(*u).unwrap_or(i64::MAX)),
        Value::Nil | Value::NoValue => Err("cannot index slice/array with nil".into()),
        other => Err(format!(
            "cannot index slice/array with type {}",
            other.type_name()
        )),
    }
}

fn slice(item: &Value, idx: &[&Value]) -> Result<Value, String> {
    let len = match item {
        Value::String(s) => s.len(),
        Value::List(l) => l.len(),
        Value::Nil | Value::NoValue => return Err("slice of untyped nil".into()),
        other => return Err(format!("can't slice item of type {}", other.type_name())),
    };
    if idx.len() > 3 {
        return Err(format!("too many slice indexes: {}", idx.len()));
    }
    if idx.len() == 3 && matches!(item, Value::String(_)) {
        return Err("cannot 3-index slice a string".into());
    }
    let mut bounds = [0usize, len, len];
    for (i, v) in idx.iter().enumerate() {
        let x = index_of(v)?;
        if x < 0 || x as u64 > len as u64 {
            return Err(format!("index out of range: {x}"));
        }
        bounds[i] = x as usize;
    }
    if bounds[0] > bounds[1] {
        return Err(format!(
            "invalid slice index: {} > {}",
            bounds[0], bounds[1]
        ));
    }
    if idx.len() == 3 && bounds[1] > bounds[2] {
        return Err(format!(
            "invalid slice index: {} > {}",
            bounds[1], bounds[2]
        ));
    }
    Ok(match item {
        Value::String(s) => {
            Value::String(String::from_utf8_lossy(&s.as_bytes()[bounds[0]..bounds[1]]).into_owned())
        }
        Value::List(l) => Value::List(l[bounds[0]..bounds[1]].to_vec()),
        _ => Value::Nil,
    })
}

/// The kinds `eq` and `lt` compare.
enum Basic<'a> {
    Invalid,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Str(&'a str),
    Other,
}

fn basic(v: &Value) -> Basic<'_> {
    match v {
        Value::Nil | Value::NoValue => Basic::Invalid,
        Value::Bool(b) => Basic::Bool(*b),
        Value::Int(i) => Basic::Int(*i),
        Value::Uint(u) => Basic::Uint(*u),
        Value::Float(f) => Basic::Float(*f),
        Value::String(s) => Basic::Str(s),
        Value::List(_) | Value::Object(_) => Basic::Other,
    }
}

const INCOMPATIBLE: &str = "incompatible types for comparison";

fn eq(a: &Value, b: &Value) -> Result<bool, String> {
    Ok(match (basic(a), basic(b)) {
        (Basic::Bool(x), Basic::Bool(y)) => x == y,
        (Basic::Int(x), Basic::Int(y)) => x == y,
        (Basic::Uint(x), Basic::Uint(y)) => x == y,
        (Basic::Int(x), Basic::Uint(y)) | (Basic::Uint(y), Basic::Int(x)) => {
            x >= 0 && x as u64 == y
        }
        (Basic::Float(x), Basic::Float(y)) => x == y,
        (Basic::Str(x), Basic::Str(y)) => x == y,
        (Basic::Invalid, Basic::Invalid) => true,
        (Basic::Invalid, _) | (_, Basic::Invalid) => false,
        (Basic::Other, _) | (_, Basic::Other) => {
            return Err(format!(
                "non-comparable types {}: {}",
                a.type_name(),
                b.type_name()
            ));
        }
        _ => return Err(INCOMPATIBLE.into()),
    })
}

fn lt(a: &Value, b: &Value) -> Result<bool, String> {
    Ok(match (basic(a), basic(b)) {
        (Basic::Int(x), Basic::Int(y)) => x < y,
        (Basic::Uint(x), Basic::Uint(y)) => x < y,
        (Basic::Int(x), Basic::Uint(y)) => x < 0 || (x as u64) < y,
        (Basic::Uint(x), Basic::Int(y)) => y >= 0 && x < y as u64,
        (Basic::Float(x), Basic::Float(y)) => x < y,
        (Basic::Str(x), Basic::Str(y)) => x < y,
        (Basic::Bool(_), Basic::Bool(_))
        | (Basic::Other, _)
        | (_, Basic::Other)
        | (Basic::Invalid, _)
        | (_, Basic::Invalid) => return Err("invalid type for comparison".into()),
        _ => return Err(INCOMPATIBLE.into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, args: &[Value]) -> Result<Value, String> {
        let refs: Vec<&Value> = args.iter().collect();
        match builtin(name, &refs).expect("a builtin") {
            Ok(v) => Ok(v),
            Err(CallError::Arity(e) | CallError::Failed(e)) => Err(e),
        }
    }

    #[test]
    fn comparisons_follow_go() {
        let (i, u, f, s) = (
            Value::Int(3),
            Value::Uint(3),
            Value::Float(3.0),
            Value::String("3".into()),
        );
        assert_eq!(call("eq", &[i.clone(), u.clone()]), Ok(Value::Bool(true)));
        assert_eq!(
            call("eq", &[i.clone(), f.clone()]),
            Err(INCOMPATIBLE.into())
        );
        assert_eq!(call("eq", &[s.clone(), s.clone()]), Ok(Value::Bool(true)));
        assert_eq!(
            call("eq", &[i.clone(), Value::Int(1), Value::Int(3)]),
            Ok(Value::Bool(true))
        );
        assert_eq!(call("eq", &[Value::Nil, Value::Nil]), Ok(Value::Bool(true)));
        assert_eq!(call("eq", &[Value::Nil, i.clone()]), Ok(Value::Bool(false)));
        assert!(call("eq", &[Value::List(vec![]), Value::List(vec![])]).is_err());
        assert_eq!(
            call("lt", &[Value::Int(-1), u.clone()]),
            Ok(Value::Bool(true))
        );
        assert_eq!(call("le", &[i.clone(), u.clone()]), Ok(Value::Bool(true)));
        assert_eq!(call("gt", &[i.clone(), u.clone()]), Ok(Value::Bool(false)));
        assert_eq!(call("ge", &[i.clone(), u]), Ok(Value::Bool(true)));
        assert!(call("lt", &[Value::Bool(true), Value::Bool(false)]).is_err());
        assert!(call("ne", &[i]).is_err());
        assert!(call("eq", &[]).is_err());
    }

    #[test]
    fn escapers() {
        assert_eq!(
            html("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&#34;&lt;/a&gt;"
        );
        assert_eq!(
            js("a'b\"c<d>=\\\n"),
            "a\\'b\\\"c\\u003Cd\\u003E\\u003D\\\\\\u000A"
        );
        assert_eq!(urlquery("a b&c=d/é"), "a+b%26c%3Dd%2F%C3%A9");
    }

    #[test]
    fn slices_and_lengths() {
        let l = Value::List(vec![Value::Int(1), Value::Int(2), Value::Int(3)]);
        assert_eq!(
            call("slice", &[l.clone(), Value::Int(1)]),
            Ok(Value::List(vec![Value::Int(2), Value::Int(3)]))
        );
        assert_eq!(
            call(
                "slice",
                &[Value::String("hello".into()), Value::Int(1), Value::Int(3)]
            ),
            Ok(Value::String("el".into()))
        );
        assert!(call("slice", &[l.clone(), Value::Int(4)]).is_err());
        assert!(call("slice", &[l.clone(), Value::Int(2), Value::Int(1)]).is_err());
        assert_eq!(call("len", &[l]), Ok(Value::Int(3)));
        assert_eq!(call("len", &[Value::Nil]), Ok(Value::Int(0)));
        assert!(call("len", &[Value::Int(3)]).is_err());
        assert_eq!(
            json(&[&Value::from_json(r#"{"B":1,"A":"<x>"}"#).unwrap()]),
            Ok(Value::String(r#"{"B":1,"A":"\u003cx\u003e"}"#.into()))
        );
    }
}
