//! Go's `fmt` as templates reach it: `%v` printing of values, `printf`'s verbs, flags, width and
//! precision, and `print`/`println`'s spacing rules.

use std::fmt::Write as _;

use crate::value::Value;

/// `fmt.Sprint(v)`; `no_value` is what an invalid value prints as (`<no value>` in template
/// output, `<nil>` inside `fmt`).
pub(crate) fn print_value(v: &Value, no_value: &str, out: &mut String) {
    format_value(out, v, 'v', &Spec::default(), no_value);
}

/// `fmt.Sprint(args...)`: a space between operands when neither side is a string.
pub(crate) fn sprint(args: &[&Value]) -> String {
    let mut out = String::new();
    let mut prev_string = false;
    for (i, a) in args.iter().enumerate() {
        let is_string = matches!(a, Value::String(_));
        if i > 0 && !is_string && !prev_string {
            out.push(' ');
        }
        print_value(a, "<nil>", &mut out);
        prev_string = is_string;
    }
    out
}

/// `fmt.Sprintln(args...)`: spaces between all operands and a newline.
pub(crate) fn sprintln(args: &[&Value]) -> String {
    let mut out = String::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        print_value(a, "<nil>", &mut out);
    }
    out.push('\n');
    out
}

/// One conversion's flags, width and precision.
#[derive(Clone, Copy, Debug, Default)]
struct Spec {
    minus: bool,
    plus: bool,
    sharp: bool,
    space: bool,
    zero: bool,
    width: Option<usize>,
    prec: Option<usize>,
}

/// Widths and precisions beyond this are refused (`%!(BADWIDTH)`), so a template cannot ask
/// for gigabytes of padding.
const MAX_WIDTH: usize = 1 << 16;

/// `fmt.Sprintf(format, args...)`.
pub(crate) fn sprintf(format: &str, args: &[&Value]) -> String {
    let mut out = String::new();
    let mut chars = format.chars().peekable();
    let mut argi = 0usize;
    let mut reordered = false;
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = Spec::default();
        while let Some(&f) = chars.peek() {
            match f {
                '#' => spec.sharp = true,
                '0' => spec.zero = !spec.minus,
                '+' => spec.plus = true,
                '-' => {
                    spec.minus = true;
                    spec.zero = false;
                }
                ' ' => spec.space = true,
                _ => break,
            }
            chars.next();
        }
        // Argument index `[n]`, before the width.
        let mut bad_index = false;
        if let Some(n) = arg_index(&mut chars, &mut bad_index, &mut reordered, args.len()) {
            argi = n;
        }
        // Width: digits or `*` (a negative `*` width left-justifies).
        match count(&mut chars, args, &mut argi) {
            Some(Some(w)) => {
                if w < 0 {
                    spec.minus = true;
                    spec.zero = false;
                }
                spec.width = Some(w.unsigned_abs() as usize);
            }
            Some(None) => out.push_str("%!(BADWIDTH)"),
            None => {}
        }
        // Precision: `.`, then digits or `*` (none: zero).
        if chars.peek() == Some(&'.') {
            chars.next();
            if let Some(n) = arg_index(&mut chars, &mut bad_index, &mut reordered, args.len()) {
                argi = n;
            }
            match count(&mut chars, args, &mut argi) {
                Some(Some(p)) if p >= 0 => spec.prec = Some(p as usize),
                Some(_) => out.push_str("%!(BADPREC)"),
                None => spec.prec = Some(0),
            }
        }
        if let Some(n) = arg_index(&mut chars, &mut bad_index, &mut reordered, args.len()) {
            argi = n;
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        if bad_index {
            let _ = write!(out, "%!{verb}(BADINDEX)");
            continue;
        }
        match args.get(argi) {
            None => {
                let _ = write!(out, "%!{verb}(MISSING)");
            }
            Some(a) => {
                format_value(&mut out, a, verb, &spec, "<nil>");
                argi += 1;
            }
        }
    }
    if !reordered && argi < args.len() {
        out.push_str("%!(EXTRA ");
        for (i, a) in args[argi..].iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            if matches!(a, Value::Nil | Value::NoValue) {
                out.push_str("<nil>");
            } else {
                out.push_str(a.type_name());
                out.push('=');
                print_value(a, "<nil>", &mut out);
            }
        }
        out.push(')');
    }
    out
}

/// `[n]` (1-based) if present: the 0-based index, or sets `bad` if it is out of range or
/// malformed. Any `[` marks the arguments as reordered (no `EXTRA` complaint then).
fn arg_index(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    bad: &mut bool,
    reordered: &mut bool,
    nargs: usize,
) -> Option<usize> {
    if chars.peek() != Some(&'[') {
        return None;
    }
    *reordered = true;
    chars.next();
    let n = digits(chars);
    if chars.next() != Some(']') {
        *bad = true;
        return None;
    }
    match n {
        Some(n) if n >= 1 && n <= nargs => Some(n - 1),
        _ => {
            *bad = true;
            None
        }
    }
}

/// A width or precision: digits, or `*` taking the next argument. `None` when there is
/// neither; `Some(None)` when it is unusable (not an integer, or beyond [`MAX_WIDTH`]).
fn count(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    args: &[&Value],
    argi: &mut usize,
) -> Option<Option<i64>> {
    let n = if chars.peek() == Some(&'*') {
        chars.next();
        let v = args.get(*argi).and_then(|a| int_of(a));
        *argi += 1;
        v
    } else {
        Some(i64::try_from(digits(chars)?).unwrap_or(i64::MAX))
    };
    Some(n.filter(|n| n.unsigned_abs() <= MAX_WIDTH as u64))
}

fn digits(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<usize> {
    let mut n: Option<usize> = None;
    while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
        chars.next();
        n = Some(n.unwrap_or(0).saturating_mul(10).saturating_add(d as usize));
    }
    n
}

fn int_of(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::Uint(u) => i64::try_from(*u).ok(),
        _ => None,
    }
}

/// Formats one operand with `verb` (Go's `printArg`/`printValue`).
fn format_value(out: &mut String, v: &Value, verb: char, spec: &Spec, no_value: &str) {
    if verb == 'T' {
        pad(out, v.type_name(), spec);
        return;
    }
    match v {
        Value::NoValue | Value::Nil => match verb {
            'v' if matches!(v, Value::NoValue) => pad(out, no_value, spec),
            'v' => pad(out, "<nil>", spec),
            _ => {
                let _ = write!(out, "%!{verb}(<nil>)");
            }
        },
        Value::Bool(b) => match verb {
            't' | 'v' => pad(out, if *b { "true" } else { "false" }, spec),
            _ => bad_verb(out, v, verb),
        },
        Value::Int(i) => format_int(out, *i < 0, i.unsigned_abs(), v, verb, spec),
        Value::Uint(u) => format_int(out, false, *u, v, verb, spec),
        Value::Float(f) => format_float(out, *f, v, verb, spec),
        Value::String(s) => match verb {
            'v' | 's' => pad_str(out, s, spec),
            'q' => pad(out, &quote(s, spec.sharp, spec.plus), spec),
            'x' | 'X' => pad(out, &hex_str(s.as_bytes(), verb == 'X', spec), spec),
            _ => bad_verb(out, v, verb),
        },
        Value::List(l) => {
            out.push('[');
            for (i, e) in l.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                format_value(out, e, verb, spec, no_value);
            }
            out.push(']');
        }
        Value::Object(_) => {
            let is_struct = v.is_struct();
            out.push_str(if is_struct { "{" } else { "map[" });
            for (i, (k, e)) in v.entries().into_iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                if !is_struct {
                    format_value(out, &Value::String(k.to_owned()), verb, spec, no_value);
                    out.push(':');
                } else if spec.plus {
                    out.push_str(k);
                    out.push(':');
                }
                format_value(out, e, verb, spec, no_value);
            }
            out.push_str(if is_struct { "}" } else { "]" });
        }
    }
}

/// `%!verb(type=value)`.
fn bad_verb(out: &mut String, v: &Value, verb: char) {
    let _ = write!(out, "%!{verb}({}=", v.type_name());
    print_value(v, "<nil>", out);
    out.push(')');
}

/// Pads `s` to the width (spaces, or zeros with the `0` flag, on the left unless `-`).
fn pad(out: &mut String, s: &str, spec: &Spec) {
    let n = s.chars().count();
    let fill = spec.width.map_or(0, |w| w.saturating_sub(n));
    if spec.minus {
        out.push_str(s);
        out.extend(std::iter::repeat_n(' ', fill));
    } else {
        let c = if spec.zero { '0' } else { ' ' };
        out.extend(std::iter::repeat_n(c, fill));
        out.push_str(s);
    }
}

/// A string with the precision as its most runes, then padded.
fn pad_str(out: &mut String, s: &str, spec: &Spec) {
    match spec.prec {
        Some(p) => {
            let cut: String = s.chars().take(p).collect();
            pad(out, &cut, spec);
        }
        None => pad(out, s, spec),
    }
}

/// Pads a number: zeros go after the sign.
fn pad_number(out: &mut String, sign: &str, body: &str, spec: &Spec, zero_ok: bool) {
    let n = sign.len() + body.chars().count();
    let fill = spec.width.map_or(0, |w| w.saturating_sub(n));
    if spec.minus {
        out.push_str(sign);
        out.push_str(body);
        out.extend(std::iter::repeat_n(' ', fill));
    } else if spec.zero && zero_ok {
        out.push_str(sign);
        out.extend(std::iter::repeat_n('0', fill));
        out.push_str(body);
    } else {
        out.extend(std::iter::repeat_n(' ', fill));
        out.push_str(sign);
        out.push_str(body);
    }
}

fn sign_of(neg: bool, spec: &Spec) -> &'static str {
    if neg {
        "-"
    } else if spec.plus {
        "+"
    } else if spec.space {
        " "
    } else {
        ""
    }
}

fn format_int(out: &mut String, neg: bool, mag: u64, v: &Value, verb: char, spec: &Spec) {
    // The integer as a character (U+FFFD when it is none), for %c and %q.
    let as_char = || {
        u32::try_from(mag)
            .ok()
            .filter(|_| !neg)
            .and_then(char::from_u32)
            .unwrap_or('\u{FFFD}')
    };
    let (base, upper) = match verb {
        'd' | 'v' => (10, false),
        'b' => (2, false),
        'o' | 'O' => (8, false),
        'x' => (16, false),
        'X' => (16, true),
        'c' => return pad(out, &as_char().to_string(), spec),
        'q' => return pad(out, &quote_rune(as_char()), spec),
        'U' => {
            let mut s = format!("U+{mag:04X}");
            if spec.sharp {
                if let Some(c) = u32::try_from(mag).ok().and_then(char::from_u32) {
                    let _ = write!(s, " '{c}'");
                }
            }
            pad(out, &s, spec);
            return;
        }
        _ => return bad_verb(out, v, verb),
    };
    let mut body = match base {
        2 => format!("{mag:b}"),
        8 => format!("{mag:o}"),
        16 if upper => format!("{mag:X}"),
        16 => format!("{mag:x}"),
        _ => format!("{mag}"),
    };
    if let Some(p) = spec.prec {
        if p == 0 && mag == 0 {
            body.clear();
        } else if body.len() < p {
            body = format!("{}{body}", "0".repeat(p - body.len()));
        }
    }
    let prefix = match (base, spec.sharp, verb) {
        (8, _, 'O') => "0o",
        (8, true, _) if !body.starts_with('0') => "0",
        (16, true, _) if upper => "0X",
        (16, true, _) => "0x",
        (2, true, _) => "0b",
        _ => "",
    };
    let sign = format!("{}{prefix}", sign_of(neg, spec));
    // With a precision, Go pads with spaces even under the `0` flag.
    pad_number(out, &sign, &body, spec, spec.prec.is_none());
}

fn format_float(out: &mut String, f: f64, v: &Value, verb: char, spec: &Spec) {
    let body = match verb {
        'v' | 'g' | 'G' => format_g(f.abs(), spec.prec, verb == 'G'),
        'e' | 'E' => format_e(f.abs(), spec.prec.unwrap_or(6), verb == 'E'),
        'f' | 'F' => format!("{:.*}", spec.prec.unwrap_or(6), f.abs()),
        _ => return bad_verb(out, v, verb),
    };
    if f.is_nan() {
        let sign = if spec.plus {
            "+"
        } else if spec.space {
            " "
        } else {
            ""
        };
        pad_number(out, sign, "NaN", spec, false);
        return;
    }
    if f.is_infinite() {
        let sign = if f < 0.0 {
            "-"
        } else if spec.space && !spec.plus {
            " "
        } else {
            "+"
        };
        pad_number(out, sign, "Inf", spec, false);
        return;
    }
    let neg = f.is_sign_negative();
    pad_number(out, sign_of(neg, spec), &body, spec, true);
}

/// The shortest decimal digits that round-trip `f` (no sign, no trailing zeros, "0" for zero)
/// and the decimal exponent of the first digit.
pub(crate) fn shortest_digits(f: f64) -> (String, i32) {
    split_e(&format!("{:e}", f.abs()))
}

/// Splits Rust's `{:e}` output (`1.2345e-7`) into digits and exponent.
fn split_e(s: &str) -> (String, i32) {
    let (mant, exp) = s.split_once('e').unwrap_or((s, "0"));
    let digits: String = mant.chars().filter(char::is_ascii_digit).collect();
    (digits, exp.parse().unwrap_or(0))
}

fn exp_suffix(exp: i32, upper: bool) -> String {
    format!(
        "{}{}{:02}",
        if upper { 'E' } else { 'e' },
        if exp < 0 { '-' } else { '+' },
        exp.unsigned_abs()
    )
}

/// `%e` of a non-negative number with `prec` digits after the point.
fn format_e(f: f64, prec: usize, upper: bool) -> String {
    if !f.is_finite() {
        return String::new();
    }
    let (digits, exp) = split_e(&format!("{f:.prec$e}"));
    let mut s = digits[..1].to_owned();
    if prec > 0 {
        s.push('.');
        s.push_str(&digits[1..]);
    }
    s.push_str(&exp_suffix(exp, upper));
    s
}

/// `%g` (and `%v`) of a non-negative number: shortest digits when `prec` is `None`, else
/// `prec` significant digits; exponent form when the exponent is below -4 or at least the
/// precision (6 for the shortest form); trailing zeros removed.
fn format_g(f: f64, prec: Option<usize>, upper: bool) -> String {
    if !f.is_finite() {
        return String::new();
    }
    let (mut digits, exp) = match prec {
        None => shortest_digits(f),
        Some(p) => split_e(&format!("{f:.*e}", p.max(1) - 1)),
    };
    while digits.len() > 1 && digits.ends_with('0') {
        digits.pop();
    }
    let nd = digits.len() as i64;
    let dp = i64::from(exp) + 1;
    let eprec = match prec {
        None => 6,
        Some(p) => {
            let p = p.max(1) as i64;
            if p > nd && nd >= dp { nd } else { p }
        }
    };
    let e = dp - 1;
    if e < -4 || e >= eprec {
        let mut s = digits[..1].to_owned();
        if nd > 1 {
            s.push('.');
            s.push_str(&digits[1..]);
        }
        s.push_str(&exp_suffix(exp, upper));
        return s;
    }
    if dp <= 0 {
        format!("0.{}{digits}", "0".repeat(dp.unsigned_abs() as usize))
    } else if dp >= nd {
        format!("{digits}{}", "0".repeat((dp - nd) as usize))
    } else {
        format!("{}.{}", &digits[..dp as usize], &digits[dp as usize..])
    }
}

/// `strconv.Quote` (or a raw string with `#` when possible, ASCII-only with `+`).
fn quote(s: &str, sharp: bool, ascii: bool) -> String {
    if sharp && !s.contains('`') && s.chars().all(|c| c == '\t' || !c.is_control()) {
        return format!("`{s}`");
    }
    let mut out = String::from("\"");
    for c in s.chars() {
        escape_char(c, '"', ascii, &mut out);
    }
    out.push('"');
    out
}

fn quote_rune(c: char) -> String {
    let mut out = String::from("'");
    escape_char(c, '\'', false, &mut out);
    out.push('\'');
    out
}

fn escape_char(c: char, quote: char, ascii: bool, out: &mut String) {
    match c {
        '\x07' => out.push_str("\\a"),
        '\x08' => out.push_str("\\b"),
        '\x0c' => out.push_str("\\f"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\x0b' => out.push_str("\\v"),
        '\\' => out.push_str("\\\\"),
        c if c == quote => {
            out.push('\\');
            out.push(c);
        }
        c if (c as u32) < 0x20 || c == '\x7f' => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c if c.is_control() || (ascii && !c.is_ascii()) => {
            if (c as u32) < 0x10000 {
                let _ = write!(out, "\\u{:04x}", c as u32);
            } else {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
        c => out.push(c),
    }
}

fn hex_str(bytes: &[u8], upper: bool, spec: &Spec) -> String {
    let bytes = match spec.prec {
        Some(p) if p < bytes.len() => &bytes[..p],
        _ => bytes,
    };
    let mut s = String::new();
    for (i, b) in bytes.iter().enumerate() {
        if spec.space && i > 0 {
            s.push(' ');
        }
        if spec.sharp && (spec.space || i == 0) {
            s.push_str(if upper { "0X" } else { "0x" });
        }
        let _ = if upper {
            write!(s, "{b:02X}")
        } else {
            write!(s, "{b:02x}")
        };
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(format: &str, args: &[Value]) -> String {
        let refs: Vec<&Value> = args.iter().collect();
        sprintf(format, &refs)
    }

    fn s(x: &str) -> Value {
        Value::String(x.to_owned())
    }

    #[test]
    fn weave_status_verbs() {
        // The conversions Weave's own status templates use.
        assert_eq!(
            f("%-21v|", &[s("192.0.2.12:6783")]),
            "192.0.2.12:6783      |"
        );
        assert_eq!(f("%-11v|", &[s("established")]), "established|");
        assert_eq!(f("%-37v|", &[s("ab(c)")]).len(), 38);
        assert_eq!(f("%12.12v", &[s("eebd81120ee4abcdef")]), "eebd81120ee4");
        assert_eq!(f("%12.12v", &[s("short")]), "       short");
        assert_eq!(f("%-6v %v", &[s("sleeve"), s("x")]), "sleeve x");
        assert_eq!(f("%8d", &[Value::Int(524288)]), "  524288");
        assert_eq!(f("%04.1f%%", &[Value::Float(6.25)]), "06.2%");
        assert_eq!(f("%04.1f", &[Value::Float(50.0)]), "50.0");
        assert_eq!(f("%04.1f", &[Value::Float(100.0)]), "100.0");
        assert_eq!(f(".%v", &[s("weave.local.")]), ".weave.local.");
    }

    #[test]
    fn integers() {
        assert_eq!(f("%d", &[Value::Int(-42)]), "-42");
        assert_eq!(f("%+d", &[Value::Int(42)]), "+42");
        assert_eq!(f("%05d", &[Value::Int(-42)]), "-0042");
        assert_eq!(f("%-5d|", &[Value::Int(42)]), "42   |");
        assert_eq!(f("%.3d", &[Value::Int(7)]), "007");
        assert_eq!(
            f(
                "%x %X %#x %o %#o %O %b",
                &[
                    Value::Int(255),
                    Value::Int(255),
                    Value::Int(255),
                    Value::Int(8),
                    Value::Int(8),
                    Value::Int(8),
                    Value::Int(5)
                ]
            ),
            "ff FF 0xff 10 010 0o10 101"
        );
        assert_eq!(f("%c%c", &[Value::Int(72), Value::Int(105)]), "Hi");
        assert_eq!(f("%q", &[Value::Int(97)]), "'a'");
        assert_eq!(f("%U", &[Value::Int(0x1F600)]), "U+1F600");
        assert_eq!(f("%d", &[Value::Uint(u64::MAX)]), "18446744073709551615");
        assert_eq!(f("%v", &[Value::Int(3)]), "3");
    }

    #[test]
    fn floats() {
        assert_eq!(f("%v", &[Value::Float(1e6)]), "1e+06");
        assert_eq!(f("%v", &[Value::Float(123456.0)]), "123456");
        assert_eq!(f("%v", &[Value::Float(1234567.0)]), "1.234567e+06");
        assert_eq!(f("%v", &[Value::Float(0.0001)]), "0.0001");
        assert_eq!(f("%v", &[Value::Float(0.00001)]), "1e-05");
        assert_eq!(f("%v", &[Value::Float(2.5)]), "2.5");
        assert_eq!(f("%v", &[Value::Float(-0.5)]), "-0.5");
        assert_eq!(f("%v", &[Value::Float(0.0)]), "0");
        assert_eq!(f("%f", &[Value::Float(1.5)]), "1.500000");
        assert_eq!(f("%.2f", &[Value::Float(1.23456)]), "1.23");
        assert_eq!(f("%8.3f|", &[Value::Float(-1.23456)]), "  -1.235|");
        assert_eq!(f("%e", &[Value::Float(1234.5678)]), "1.234568e+03");
        assert_eq!(f("%.2E", &[Value::Float(0.000123)]), "1.23E-04");
        assert_eq!(f("%g", &[Value::Float(100000.0)]), "100000");
        assert_eq!(f("%.3g", &[Value::Float(1234.0)]), "1.23e+03");
        assert_eq!(f("%.3g", &[Value::Float(1.0)]), "1");
        assert_eq!(f("%.3g", &[Value::Float(0.5)]), "0.5");
        assert_eq!(f("%g", &[Value::Float(f64::INFINITY)]), "+Inf");
        assert_eq!(f("%v", &[Value::Float(f64::NAN)]), "NaN");
        assert_eq!(f("%+.1f", &[Value::Float(2.0)]), "+2.0");
    }

    #[test]
    fn strings_and_others() {
        assert_eq!(f("%s", &[s("hi")]), "hi");
        assert_eq!(f("%5s|%-5s|", &[s("ab"), s("cd")]), "   ab|cd   |");
        assert_eq!(f("%.1s", &[s("héllo")]), "h");
        assert_eq!(f("%q", &[s("a\"b\n")]), "\"a\\\"b\\n\"");
        assert_eq!(f("%#q", &[s("ab")]), "`ab`");
        assert_eq!(f("%x", &[s("hi")]), "6869");
        assert_eq!(f("% x", &[s("hi")]), "68 69");
        assert_eq!(f("%t", &[Value::Bool(true)]), "true");
        assert_eq!(f("%v", &[Value::Nil]), "<nil>");
        assert_eq!(f("%T %T", &[s("x"), Value::Int(1)]), "string int");
        assert_eq!(
            f("%v", &[Value::List(vec![s("a"), Value::Int(1)])]),
            "[a 1]"
        );
        assert_eq!(
            f("%d", &[Value::List(vec![Value::Int(1), Value::Int(2)])]),
            "[1 2]"
        );
    }

    #[test]
    fn mistakes_are_spelled_out() {
        assert_eq!(f("%d", &[s("x")]), "%!d(string=x)");
        assert_eq!(f("%s", &[Value::Int(5)]), "%!s(int=5)");
        assert_eq!(f("%f", &[Value::Int(5)]), "%!f(int=5)");
        assert_eq!(f("%d %d", &[Value::Int(1)]), "1 %!d(MISSING)");
        assert_eq!(f("%d", &[Value::Int(1), s("x")]), "1%!(EXTRA string=x)");
        assert_eq!(f("%", &[]), "%!(NOVERB)");
        assert_eq!(f("%z", &[Value::Int(1)]), "%!z(int=1)");
        assert_eq!(f("%d", &[Value::Nil]), "%!d(<nil>)");
        assert_eq!(f("100%%", &[]), "100%");
        assert_eq!(f("%[2]d %[1]d", &[Value::Int(1), Value::Int(2)]), "2 1");
        assert_eq!(f("%[3]d", &[Value::Int(1)]), "%!d(BADINDEX)");
        assert_eq!(f("%*d", &[Value::Int(4), Value::Int(7)]), "   7");
        assert_eq!(f("%*d", &[s("x"), Value::Int(7)]), "%!(BADWIDTH)7");
        assert!(f("%99999999d", &[Value::Int(1)]).starts_with("%!(BADWIDTH)"));
    }

    #[test]
    fn sprint_spacing() {
        let (a, b, c) = (s("a"), Value::Int(1), Value::Int(2));
        assert_eq!(sprint(&[&a, &b, &c]), "a1 2");
        assert_eq!(sprint(&[&b, &a, &c]), "1a2");
        assert_eq!(sprintln(&[&a, &b]), "a 1\n");
    }
}
