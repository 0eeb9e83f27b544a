//! The data a template runs over: JSON with object keys kept in document order (Go prints and
//! marshals struct fields in declaration order), plus Go's "no value" for a missing map key.

use std::fmt::Write as _;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A JSON value as a Go template sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// What a missing map key evaluates to (Go's invalid `reflect.Value`); prints `<no value>`.
    NoValue,
    /// `null`: a nil pointer, slice, map or interface.
    Nil,
    /// `true` / `false`.
    Bool(bool),
    /// An integer that fits an `i64` (Go's `int`).
    Int(i64),
    /// An integer above `i64::MAX` (Go's `uint`).
    Uint(u64),
    /// A number with a fraction or an exponent (Go's `float64`).
    Float(f64),
    /// A string.
    String(String),
    /// An array (Go's slice).
    List(Vec<Self>),
    /// An object, keys in document order; a struct or a map (see the crate documentation).
    Object(Vec<(String, Self)>),
}

impl Value {
    /// Parses JSON text, keeping object keys in the order they appear.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Converts anything serde can serialise (a `#[derive(Serialize)]` struct keeps its field
    /// order, as Go's encoding of a struct does).
    pub fn from_serialize<T: serde::Serialize + ?Sized>(v: &T) -> Result<Self, serde_json::Error> {
        Self::from_json(&serde_json::to_string(v)?)
    }

    /// The value under `key` if this is an object that has it.
    pub fn get(&self, key: &str) -> Option<&Self> {
        match self {
            Self::Object(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The value under `key`, mutably, if this is an object that has it.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Self> {
        match self {
            Self::Object(fields) => fields.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Sets `key` in an object (replacing its value, or appending it); does nothing to other
    /// values.
    pub fn insert(&mut self, key: &str, value: Self) {
        if let Self::Object(fields) = self {
            match fields.iter_mut().find(|(k, _)| k == key) {
                Some((_, v)) => *v = value,
                None => fields.push((key.to_owned(), value)),
            }
        }
    }

    /// Whether this object stands for a Go struct: it has fields and every name starts with an
    /// upper-case ASCII letter (templates reach only exported, capitalised fields).
    pub fn is_struct(&self) -> bool {
        match self {
            Self::Object(fields) => {
                !fields.is_empty()
                    && fields
                        .iter()
                        .all(|(k, _)| k.starts_with(|c: char| c.is_ascii_uppercase()))
            }
            _ => false,
        }
    }

    /// Go's notion of truth (`if`, `with`, `and`, `or`, `not`): false, 0, nil, an empty string,
    /// slice or map are false; a struct is always true.
    pub(crate) fn truth(&self) -> bool {
        match self {
            Self::NoValue | Self::Nil => false,
            Self::Bool(b) => *b,
            Self::Int(i) => *i != 0,
            Self::Uint(u) => *u != 0,
            Self::Float(f) => *f != 0.0,
            Self::String(s) => !s.is_empty(),
            Self::List(l) => !l.is_empty(),
            Self::Object(_) if self.is_struct() => true,
            Self::Object(m) => !m.is_empty(),
        }
    }

    /// The Go type name used in error messages and by `%T`.
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Self::NoValue | Self::Nil => "<nil>",
            Self::Bool(_) => "bool",
            Self::Int(_) => "int",
            Self::Uint(_) => "uint",
            Self::Float(_) => "float64",
            Self::String(_) => "string",
            Self::List(_) => "[]interface {}",
            Self::Object(_) if self.is_struct() => "struct",
            Self::Object(_) => "map[string]interface {}",
        }
    }

    /// The object's entries in the order `range` and printing visit them: declaration order
    /// for a struct, sorted keys for a map.
    pub(crate) fn entries(&self) -> Vec<(&str, &Self)> {
        let Self::Object(fields) = self else {
            return Vec::new();
        };
        let mut v: Vec<(&str, &Self)> = fields.iter().map(|(k, v)| (k.as_str(), v)).collect();
        if !self.is_struct() {
            v.sort_by(|a, b| a.0.cmp(b.0));
        }
        v
    }

    /// Go's `encoding/json` rendering (compact; `<`, `>`, `&` escaped as Go does). `None` for
    /// values JSON cannot hold (NaN, infinities), where Go's `json.Marshal` fails.
    pub fn to_go_json(&self) -> Option<String> {
        let mut out = String::new();
        write_json(self, &mut out).then_some(out)
    }
}

fn write_json(v: &Value, out: &mut String) -> bool {
    match v {
        Value::NoValue | Value::Nil => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Uint(u) => {
            let _ = write!(out, "{u}");
        }
        Value::Float(f) => {
            if !f.is_finite() {
                return false;
            }
            out.push_str(&json_float(*f));
        }
        Value::String(s) => json_string(s, out),
        Value::List(l) => {
            out.push('[');
            for (i, e) in l.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if !write_json(e, out) {
                    return false;
                }
            }
            out.push(']');
        }
        Value::Object(_) => {
            out.push('{');
            for (i, (k, e)) in v.entries().into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_string(k, out);
                out.push(':');
                if !write_json(e, out) {
                    return false;
                }
            }
            out.push('}');
        }
    }
    true
}

/// A float as Go's `encoding/json` writes it: plain decimal, or exponent form outside
/// [1e-6, 1e21) with a short exponent (`1e-07` becomes `1e-7`).
fn json_float(f: f64) -> String {
    let abs = f.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        let (digits, exp) = crate::fmt::shortest_digits(f);
        let mut s = String::new();
        if f < 0.0 {
            s.push('-');
        }
        s.push_str(&digits[..1]);
        if digits.len() > 1 {
            s.push('.');
            s.push_str(&digits[1..]);
        }
        let _ = write!(s, "e{}{}", if exp < 0 { '-' } else { '+' }, exp.abs());
        s
    } else {
        // Rust's Display is the shortest round-trip decimal without an exponent, as Go's 'f'.
        format!("{f}")
    }
}

fn json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Uint(v), Value::Int))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Nil)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Nil)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut v = Vec::new();
        while let Some(e) = seq.next_element()? {
            v.push(e);
        }
        Ok(Value::List(v))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut obj = Value::Object(Vec::new());
        while let Some((k, v)) = map.next_entry::<String, Value>()? {
            obj.insert(&k, v);
        }
        Ok(obj)
    }
}
