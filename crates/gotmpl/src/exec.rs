//! The evaluator: walks the tree over the data, as Go's `text/template/exec.go` does. Values
//! taken from the data stay borrowed (`Cow::Borrowed`) so field chains, `range` and variables
//! copy nothing; every step and every byte of output is counted against the [`Limits`].

use std::borrow::Cow;

use crate::funcs::{self, CallError};
use crate::parse::{Arg, ArgKind, Branch, Cmd, Node, Pipe, line_of};
use crate::value::Value;
use crate::{Error, ErrorKind, Limits, Template};

type V<'d> = Cow<'d, Value>;

/// Runs `t` over `data`.
pub(crate) fn execute(t: &Template, data: &Value, limits: Limits) -> Result<String, Error> {
    let mut s = State {
        t,
        name: &t.name,
        out: String::new(),
        vars: vec![("$", Cow::Borrowed(data))],
        steps: 0,
        depth: 0,
        limits,
    };
    s.walk_list(&Cow::Borrowed(data), &t.root)?;
    Ok(s.out)
}

/// How a list of nodes ended.
enum Flow {
    Normal,
    Break,
    Continue,
}

struct State<'t, 'd> {
    t: &'t Template,
    /// The template being executed (for messages).
    name: &'t str,
    out: String,
    vars: Vec<(&'t str, V<'d>)>,
    steps: u64,
    depth: usize,
    limits: Limits,
}

impl<'t, 'd> State<'t, 'd> {
    /// An execution error at source span `pos..end`, worded like Go's.
    fn err_at<T>(&self, pos: usize, end: usize, msg: impl std::fmt::Display) -> Result<T, Error> {
        let src = &self.t.src;
        let line = line_of(src, pos);
        let col = pos
            - src
                .get(..pos)
                .and_then(|s| s.rfind('\n'))
                .map_or(0, |i| i + 1);
        let node = src.get(pos..end).unwrap_or("");
        Err(Error::new(
            ErrorKind::Exec,
            format!(
                "template: {}:{line}:{col}: executing {:?} at <{node}>: {msg}",
                self.t.name, self.name
            ),
        ))
    }

    fn limit<T>(&self, msg: String) -> Result<T, Error> {
        Err(Error::new(
            ErrorKind::Limit,
            format!("template: {}: {msg}", self.t.name),
        ))
    }

    fn step(&mut self) -> Result<(), Error> {
        self.steps += 1;
        if self.steps > self.limits.max_steps {
            return self.limit(format!(
                "execution stopped after {} steps",
                self.limits.max_steps
            ));
        }
        Ok(())
    }

    fn check_output(&self) -> Result<(), Error> {
        if self.out.len() > self.limits.max_output {
            return self.limit(format!(
                "output is larger than {} bytes",
                self.limits.max_output
            ));
        }
        Ok(())
    }

    fn walk_list(&mut self, dot: &V<'d>, nodes: &'t [Node]) -> Result<Flow, Error> {
        for n in nodes {
            match self.walk(dot, n)? {
                Flow::Normal => {}
                flow => return Ok(flow),
            }
        }
        Ok(Flow::Normal)
    }

    fn walk(&mut self, dot: &V<'d>, node: &'t Node) -> Result<Flow, Error> {
        self.step()?;
        match node {
            Node::Text(s) => {
                self.out.push_str(s);
                self.check_output()?;
            }
            Node::Action(pipe) => {
                let v = self.eval_pipeline(dot, pipe)?;
                if pipe.decl.is_empty() {
                    crate::fmt::print_value(&v, "<no value>", &mut self.out);
                    self.check_output()?;
                }
            }
            Node::If(b) | Node::With(b) => {
                let mark = self.vars.len();
                let v = self.eval_pipeline(dot, &b.pipe)?;
                let flow = if v.truth() {
                    if matches!(node, Node::With(_)) {
                        self.walk_list(&v, &b.list)?
                    } else {
                        self.walk_list(dot, &b.list)?
                    }
                } else if let Some(list) = &b.else_list {
                    self.walk_list(dot, list)?
                } else {
                    Flow::Normal
                };
                self.vars.truncate(mark);
                return Ok(flow);
            }
            Node::Range(b) => self.walk_range(dot, b)?,
            Node::Template { pos, name, pipe } => self.walk_template(dot, *pos, name, pipe)?,
            Node::Break => return Ok(Flow::Break),
            Node::Continue => return Ok(Flow::Continue),
        }
        Ok(Flow::Normal)
    }

    fn walk_range(&mut self, dot: &V<'d>, b: &'t Branch) -> Result<(), Error> {
        let mark = self.vars.len();
        let v = self.eval_pipeline(dot, &b.pipe)?;
        let items: Vec<(Value, V<'d>)> = match &v {
            Cow::Borrowed(r) => match range_items(r) {
                Some(items) => items
                    .into_iter()
                    .map(|(k, e)| (k, Cow::Borrowed(e)))
                    .collect(),
                None => return self.range_error(&b.pipe, r),
            },
            Cow::Owned(o) => match range_items(o) {
                Some(items) => items
                    .into_iter()
                    .map(|(k, e)| (k, Cow::Owned(e.clone())))
                    .collect(),
                None => return self.range_error(&b.pipe, o),
            },
        };
        if items.is_empty() {
            if let Some(list) = &b.else_list {
                self.walk_list(dot, list)?;
            }
            self.vars.truncate(mark);
            return Ok(());
        }
        let decl = &b.pipe.decl;
        for (index, elem) in items {
            // As Go: with one variable it gets the element; with two, the index and the element.
            match (decl.len(), b.pipe.is_assign) {
                (0, _) => {}
                (1, true) => self.set_var(&decl[0], elem.clone()),
                (1, false) => self.set_top(1, elem.clone()),
                (_, true) => {
                    self.set_var(&decl[0], Cow::Owned(index));
                    self.set_var(&decl[1], elem.clone());
                }
                (_, false) => {
                    self.set_top(1, elem.clone());
                    self.set_top(2, Cow::Owned(index));
                }
            }
            let inner = self.vars.len();
            let flow = self.walk_list(&elem, &b.list)?;
            self.vars.truncate(inner);
            if let Flow::Break = flow {
                break;
            }
        }
        self.vars.truncate(mark);
        Ok(())
    }

    fn range_error<T>(&self, pipe: &Pipe, v: &Value) -> Result<T, Error> {
        let (pos, end) = pipe.cmds.first().map_or((0, 0), |c| {
            (c.pos, pipe.cmds.last().map_or(c.end, |l| l.end))
        });
        let mut shown = String::new();
        crate::fmt::print_value(v, "<no value>", &mut shown);
        self.err_at(pos, end, format!("range can't iterate over {shown}"))
    }

    fn walk_template(
        &mut self,
        dot: &V<'d>,
        pos: usize,
        name: &'t str,
        pipe: &'t Option<Pipe>,
    ) -> Result<(), Error> {
        let body: &'t [Node] = match self.t.defs.get(name) {
            Some(b) => b,
            None if name == self.t.name => &self.t.root,
            None => {
                let end = pos + name.len();
                return self.err_at(pos, end, format!("no such template {name:?}"));
            }
        };
        // Without a pipeline the template's dot is Go's invalid value.
        let v = match pipe {
            Some(p) => self.eval_pipeline(dot, p)?,
            None => Cow::Owned(Value::NoValue),
        };
        if self.depth >= self.limits.max_depth {
            return self.limit(format!(
                "exceeded maximum template depth ({})",
                self.limits.max_depth
            ));
        }
        self.depth += 1;
        let vars = std::mem::replace(&mut self.vars, vec![("$", v.clone())]);
        let caller = std::mem::replace(&mut self.name, name);
        let r = self.walk_list(&v, body);
        self.vars = vars;
        self.name = caller;
        self.depth -= 1;
        r.map(|_| ())
    }

    fn var(&self, name: &str, arg: &Arg) -> Result<V<'d>, Error> {
        match self.vars.iter().rev().find(|(n, _)| *n == name) {
            Some((_, v)) => Ok(v.clone()),
            None => self.err_at(arg.pos, arg.end, format!("undefined variable: {name}")),
        }
    }

    fn set_var(&mut self, name: &str, v: V<'d>) {
        if let Some(slot) = self.vars.iter_mut().rev().find(|(n, _)| *n == name) {
            slot.1 = v;
        }
    }

    /// Sets the `n`th variable from the top (1 is the top).
    fn set_top(&mut self, n: usize, v: V<'d>) {
        let len = self.vars.len();
        if let Some(slot) = len.checked_sub(n).and_then(|i| self.vars.get_mut(i)) {
            slot.1 = v;
        }
    }

    fn eval_pipeline(&mut self, dot: &V<'d>, pipe: &'t Pipe) -> Result<V<'d>, Error> {
        let mut val: Option<V<'d>> = None;
        for cmd in &pipe.cmds {
            val = Some(self.eval_command(dot, cmd, val)?);
        }
        let v = val.unwrap_or(Cow::Owned(Value::NoValue));
        for name in &pipe.decl {
            if pipe.is_assign {
                self.set_var(name, v.clone());
            } else {
                self.vars.push((name, v.clone()));
            }
        }
        Ok(v)
    }

    fn not_a_function(&self, cmd: &Cmd, fin: &Option<V<'d>>) -> Result<(), Error> {
        if cmd.args.len() > 1 || fin.is_some() {
            let a = &cmd.args[0];
            let text = self.t.src.get(a.pos..a.end).unwrap_or("");
            return self.err_at(
                a.pos,
                a.end,
                format!("can't give argument to non-function {text}"),
            );
        }
        Ok(())
    }

    fn eval_command(
        &mut self,
        dot: &V<'d>,
        cmd: &'t Cmd,
        fin: Option<V<'d>>,
    ) -> Result<V<'d>, Error> {
        self.step()?;
        let first = &cmd.args[0];
        match &first.kind {
            ArgKind::Field(chain) => self.eval_chain(dot.clone(), chain, first, Some((cmd, fin))),
            ArgKind::Var(name, chain) => {
                let v = self.var(name, first)?;
                if chain.is_empty() {
                    self.not_a_function(cmd, &fin)?;
                    Ok(v)
                } else {
                    self.eval_chain(v, chain, first, Some((cmd, fin)))
                }
            }
            ArgKind::Pipe(p, chain) => {
                if chain.is_empty() {
                    self.not_a_function(cmd, &fin)?;
                    self.eval_pipeline(dot, p)
                } else {
                    let v = self.eval_pipeline(dot, p)?;
                    self.eval_chain(v, chain, first, Some((cmd, fin)))
                }
            }
            ArgKind::Ident(name) => self.eval_function(dot, name, first, &cmd.args[1..], fin),
            ArgKind::Dot => {
                self.not_a_function(cmd, &fin)?;
                Ok(dot.clone())
            }
            ArgKind::Nil => self.err_at(first.pos, first.end, "nil is not a command"),
            ArgKind::Const(v) => {
                self.not_a_function(cmd, &fin)?;
                Ok(Cow::Owned(v.clone()))
            }
        }
    }

    /// `receiver.A.B...`; `call` is the command when the chain starts it (its other arguments
    /// and the piped value then make the last field a method call, which JSON cannot have).
    fn eval_chain(
        &mut self,
        receiver: V<'d>,
        chain: &[String],
        at: &Arg,
        call: Option<(&Cmd, Option<V<'d>>)>,
    ) -> Result<V<'d>, Error> {
        let has_args = call.is_some_and(|(cmd, fin)| cmd.args.len() > 1 || fin.is_some());
        let mut r = receiver;
        for (i, name) in chain.iter().enumerate() {
            let args_here = has_args && i + 1 == chain.len();
            r = match self.field(r, name, args_here) {
                Ok(v) => v,
                Err(msg) => return self.err_at(at.pos, at.end, msg),
            };
        }
        Ok(r)
    }

    fn field(&self, recv: V<'d>, name: &str, has_args: bool) -> Result<V<'d>, String> {
        let check = |v: &Value| -> Result<Option<usize>, String> {
            match v {
                Value::Object(fields) => {
                    let found = fields.iter().position(|(k, _)| k == name);
                    if v.is_struct() {
                        match found {
                            None => Err(format!("can't evaluate field {name} in type struct")),
                            Some(_) if has_args => Err(format!(
                                "{name} has arguments but cannot be invoked as function"
                            )),
                            Some(i) => Ok(Some(i)),
                        }
                    } else if has_args {
                        Err(format!("{name} is not a method but has arguments"))
                    } else {
                        Ok(found)
                    }
                }
                Value::Nil | Value::NoValue => {
                    Err(format!("nil pointer evaluating interface {{}}.{name}"))
                }
                other => Err(format!(
                    "can't evaluate field {name} in type {}",
                    other.type_name()
                )),
            }
        };
        match recv {
            Cow::Borrowed(r) => Ok(match (check(r)?, r) {
                (Some(i), Value::Object(f)) => Cow::Borrowed(&f[i].1),
                _ => Cow::Owned(Value::NoValue),
            }),
            Cow::Owned(o) => Ok(match (check(&o)?, o) {
                (Some(i), Value::Object(mut f)) => Cow::Owned(f.swap_remove(i).1),
                _ => Cow::Owned(Value::NoValue),
            }),
        }
    }

    fn eval_arg(&mut self, dot: &V<'d>, arg: &'t Arg) -> Result<V<'d>, Error> {
        self.step()?;
        match &arg.kind {
            ArgKind::Dot => Ok(dot.clone()),
            ArgKind::Nil => Ok(Cow::Owned(Value::Nil)),
            ArgKind::Const(v) => Ok(Cow::Owned(v.clone())),
            ArgKind::Field(chain) => self.eval_chain(dot.clone(), chain, arg, None),
            ArgKind::Var(name, chain) => {
                let v = self.var(name, arg)?;
                self.eval_chain(v, chain, arg, None)
            }
            ArgKind::Pipe(p, chain) => {
                let v = self.eval_pipeline(dot, p)?;
                self.eval_chain(v, chain, arg, None)
            }
            ArgKind::Ident(name) => self.eval_function(dot, name, arg, &[], None),
        }
    }

    fn eval_function(
        &mut self,
        dot: &V<'d>,
        name: &str,
        at: &Arg,
        args: &'t [Arg],
        fin: Option<V<'d>>,
    ) -> Result<V<'d>, Error> {
        if name == "and" || name == "or" {
            let want = name == "or";
            let total = args.len() + usize::from(fin.is_some());
            if total == 0 {
                return self.err_at(
                    at.pos,
                    at.end,
                    format!("wrong number of args for {name}: want at least 1 got 0"),
                );
            }
            let mut last = None;
            for a in args {
                let v = self.eval_arg(dot, a)?;
                if v.truth() == want {
                    return Ok(v);
                }
                last = Some(v);
            }
            return Ok(fin.or(last).unwrap_or(Cow::Owned(Value::NoValue)));
        }
        let mut vals = Vec::with_capacity(args.len() + 1);
        for a in args {
            vals.push(self.eval_arg(dot, a)?);
        }
        if let Some(f) = fin {
            vals.push(f);
        }
        if name == "index" {
            return self.index(vals, at);
        }
        let refs: Vec<&Value> = vals.iter().map(|v| &**v).collect();
        let result = match funcs::builtin(name, &refs) {
            Some(r) => r,
            None => match self.t.funcs.get(name) {
                Some(f) => f(&refs).map_err(CallError::Failed),
                None => {
                    return self.err_at(
                        at.pos,
                        at.end,
                        format!("{name:?} is not a defined function"),
                    );
                }
            },
        };
        match result {
            Ok(v) => Ok(Cow::Owned(v)),
            Err(CallError::Arity(msg)) => self.err_at(at.pos, at.end, msg),
            Err(CallError::Failed(msg)) => {
                self.err_at(at.pos, at.end, format!("error calling {name}: {msg}"))
            }
        }
    }

    /// `index item i j ...`, keeping a borrow of the data when the item is borrowed.
    fn index(&self, vals: Vec<V<'d>>, at: &Arg) -> Result<V<'d>, Error> {
        let mut it = vals.into_iter();
        let Some(mut item) = it.next() else {
            return self.err_at(
                at.pos,
                at.end,
                "wrong number of args for index: want at least 1 got 0",
            );
        };
        for key in it {
            item = match index_one(item, &key) {
                Ok(v) => v,
                Err(msg) => {
                    return self.err_at(at.pos, at.end, format!("error calling index: {msg}"));
                }
            };
        }
        Ok(item)
    }
}

/// What `range` visits: a list's indexes and elements, an object's keys and values (sorted
/// keys for a map), nothing for nil; `None` for what cannot be ranged over.
fn range_items(v: &Value) -> Option<Vec<(Value, &Value)>> {
    Some(match v {
        Value::List(l) => l
            .iter()
            .enumerate()
            .map(|(i, e)| (Value::Int(i64::try_from(i).unwrap_or(i64::MAX)), e))
            .collect(),
        Value::Object(_) => v
            .entries()
            .into_iter()
            .map(|(k, e)| (Value::String(k.to_owned()), e))
            .collect(),
        Value::Nil | Value::NoValue => Vec::new(),
        _ => return None,
    })
}

fn index_one<'d>(item: V<'d>, key: &Value) -> Result<V<'d>, String> {
    let pick = |v: &Value| -> Result<Option<usize>, String> {
        match v {
            Value::List(l) => {
                let i = funcs::index_of(key)?;
                if i < 0 || i as u64 >= l.len() as u64 {
                    return Err(format!("index out of range: {i}"));
                }
                Ok(Some(i as usize))
            }
            Value::Object(f) if !v.is_struct() => match key {
                Value::String(k) => Ok(f.iter().position(|(n, _)| n == k)),
                other => Err(format!(
                    "value has type {}; should be string",
                    other.type_name()
                )),
            },
            Value::String(s) => {
                let i = funcs::index_of(key)?;
                if i < 0 || i as u64 >= s.len() as u64 {
                    return Err(format!("index out of range: {i}"));
                }
                Ok(Some(i as usize))
            }
            Value::Nil | Value::NoValue => Err("index of untyped nil".into()),
            other => Err(format!("can't index item of type {}", other.type_name())),
        }
    };
    let at = pick(&item)?;
    Ok(match (item, at) {
        // A missing map key gives the element type's zero value: a nil interface.
        (_, None) => Cow::Owned(Value::Nil),
        (Cow::Borrowed(Value::List(l)), Some(i)) => Cow::Borrowed(&l[i]),
        (Cow::Borrowed(Value::Object(f)), Some(i)) => Cow::Borrowed(&f[i].1),
        (Cow::Owned(Value::List(mut l)), Some(i)) => Cow::Owned(l.swap_remove(i)),
        (Cow::Owned(Value::Object(mut f)), Some(i)) => Cow::Owned(f.swap_remove(i).1),
        (s, Some(i)) => match &*s {
            Value::String(s) => Cow::Owned(Value::Int(i64::from(s.as_bytes()[i]))),
            _ => Cow::Owned(Value::Nil),
        },
    })
}
