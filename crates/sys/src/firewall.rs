//! Layer: OS. The iptables rules behind `weft expose` / `weft hide` (weave-reference.md §3),
//! applied with the `iptables` command in the calling process's network namespace.
//!
//! Owns two chains and the rules in them:
//! - `nat/WEAVE`, hooked from `POSTROUTING`: per exposed subnet a `RETURN` for multicast from
//!   the subnet, and two `MASQUERADE` rules (traffic into the subnet from outside it, and traffic
//!   from the subnet to elsewhere);
//! - `filter/WEAVE-EXPOSE`, hooked from `FORWARD -o <bridge>`: per exposed subnet `-d <subnet>
//!   -j ACCEPT` (Docker sets the `FORWARD` policy to `DROP`).
//!
//! And, from router start ([`ensure_forward`]), Weave's `FORWARD` rules for the bridge itself
//! (`net/bridge.go` `ConfigureIPTables`, without network policy): accept frames between the
//! bridge's ports (`-i weave -o weave`), from the bridge to elsewhere, and replies back. They
//! matter once `br_netfilter` hands bridged IPv4 to iptables (`bridge-nf-call-iptables`, which
//! dockerd switches on when it makes a bridge without inter-container traffic, such as the
//! `docker_gwbridge` of every container on a plugin network): under Docker's `FORWARD` policy
//! `DROP`, ARP still crosses the bridge but IP between containers does not.
//!
//! Every change is idempotent: a rule is only appended after `iptables -C` says it is missing,
//! and only deleted while `-C` says it is present. The argument lists are built by pure
//! functions ([`Rule::args`], [`expose_rules`], ...) so they can be checked without root.

use std::io;
use std::process::Command;

use ipnet::Ipv4Net;

/// The NAT chain, hooked from `nat/POSTROUTING`.
pub const NAT_CHAIN: &str = "WEAVE";
/// The filter chain, hooked from `filter/FORWARD -o <bridge>`.
pub const EXPOSE_CHAIN: &str = "WEAVE-EXPOSE";
/// The program run for every change.
pub const IPTABLES: &str = "iptables";

/// Errors from running iptables. Each names the full command line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The program could not be started (not installed, no permission).
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why it could not start.
        #[source]
        source: io::Error,
    },
    /// The program ran and reported failure.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr (trimmed).
        stderr: String,
    },
}

/// One rule: table, chain and match/target arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `nat` or `filter`.
    pub table: &'static str,
    /// The chain it lives in.
    pub chain: &'static str,
    /// Everything after the chain name, e.g. `["-d", "10.32.0.0/12", "-j", "ACCEPT"]`.
    pub spec: Vec<String>,
    /// Insert at the top of the chain instead of appending (for hooks into built-in chains).
    pub insert: bool,
}

/// What to do with a [`Rule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `-C`: is it there?
    Check,
    /// `-A` (or `-I <chain> 1` for [`Rule::insert`] rules).
    Add,
    /// `-D`.
    Delete,
}

impl Rule {
    fn new(table: &'static str, chain: &'static str, spec: &[&str]) -> Self {
        Self {
            table,
            chain,
            spec: spec.iter().map(|s| (*s).to_owned()).collect(),
            insert: false,
        }
    }

    /// The iptables arguments (without the program name) for `op` on this rule.
    pub fn args(&self, op: Op) -> Vec<String> {
        let mut v: Vec<String> = vec!["-w".into(), "-t".into(), self.table.into()];
        match op {
            Op::Check => v.extend(["-C".into(), self.chain.into()]),
            Op::Delete => v.extend(["-D".into(), self.chain.into()]),
            Op::Add if self.insert => v.extend(["-I".into(), self.chain.into(), "1".into()]),
            Op::Add => v.extend(["-A".into(), self.chain.into()]),
        }
        v.extend(self.spec.iter().cloned());
        v
    }
}

/// The subnet of `addr` (host bits cleared), as iptables prints it back.
fn subnet(addr: Ipv4Net) -> String {
    addr.trunc().to_string()
}

/// The hooks from the built-in chains into ours: `nat/POSTROUTING -j WEAVE` and
/// `filter/FORWARD -o <bridge> -j WEAVE-EXPOSE`, both inserted at the top.
pub fn hook_rules(bridge: &str) -> Vec<Rule> {
    let mut post = Rule::new("nat", "POSTROUTING", &["-j", NAT_CHAIN]);
    post.insert = true;
    let mut fwd = Rule::new("filter", "FORWARD", &["-o", bridge, "-j", EXPOSE_CHAIN]);
    fwd.insert = true;
    vec![post, fwd]
}

/// Weave's `filter/FORWARD` rules for `bridge` (inserted at the top): traffic between the
/// bridge's ports, from the bridge to elsewhere, and replies into the bridge.
pub fn forward_rules(bridge: &str) -> Vec<Rule> {
    [
        &["-i", bridge, "-o", bridge, "-j", "ACCEPT"][..],
        &["-i", bridge, "!", "-o", bridge, "-j", "ACCEPT"],
        &[
            "-o",
            bridge,
            "-m",
            "conntrack",
            "--ctstate",
            "RELATED,ESTABLISHED",
            "-j",
            "ACCEPT",
        ],
    ]
    .into_iter()
    .map(|spec| {
        let mut r = Rule::new("filter", "FORWARD", spec);
        r.insert = true;
        r
    })
    .collect()
}

/// Adds [`forward_rules`] for `bridge`, each only if missing (the router does at start).
pub fn ensure_forward(bridge: &str) -> Result<(), Error> {
    for rule in forward_rules(bridge) {
        ensure_rule(&rule)?;
    }
    Ok(())
}

/// The three `nat/WEAVE` rules for an exposed address (its subnet, really): no NAT for
/// multicast from the subnet, masquerade into the subnet from outside it, and masquerade from
/// the subnet to elsewhere.
pub fn masquerade_rules(addr: Ipv4Net) -> Vec<Rule> {
    let net = subnet(addr);
    vec![
        Rule::new(
            "nat",
            NAT_CHAIN,
            &["-s", &net, "-d", "224.0.0.0/4", "-j", "RETURN"],
        ),
        Rule::new(
            "nat",
            NAT_CHAIN,
            &["!", "-s", &net, "-d", &net, "-j", "MASQUERADE"],
        ),
        Rule::new(
            "nat",
            NAT_CHAIN,
            &["-s", &net, "!", "-d", &net, "-j", "MASQUERADE"],
        ),
    ]
}

/// The `filter/WEAVE-EXPOSE` rule accepting forwarded traffic into the exposed subnet.
pub fn accept_rule(addr: Ipv4Net) -> Rule {
    Rule::new(
        "filter",
        EXPOSE_CHAIN,
        &["-d", &subnet(addr), "-j", "ACCEPT"],
    )
}

/// Everything `expose` adds for `addr`: the masquerade rules unless `skip_nat`, then the
/// forward accept.
pub fn expose_rules(addr: Ipv4Net, skip_nat: bool) -> Vec<Rule> {
    let mut rules = if skip_nat {
        Vec::new()
    } else {
        masquerade_rules(addr)
    };
    rules.push(accept_rule(addr));
    rules
}

/// Everything `hide` removes for `addr`: all rules [`expose_rules`] may have added, whether or
/// not NAT was skipped.
pub fn hide_rules(addr: Ipv4Net) -> Vec<Rule> {
    expose_rules(addr, false)
}

/// A command line for error messages.
fn command_line(program: &str, args: &[String]) -> String {
    let mut s = program.to_owned();
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

/// Runs iptables with `args`; `Ok(true)` on exit 0, `Ok(false)` on exit 1 when `check` (a
/// failed `-C`, or `-S` of a missing chain), an error otherwise.
fn run(args: &[String], check: bool) -> Result<bool, Error> {
    let command = command_line(IPTABLES, args);
    let out = Command::new(IPTABLES)
        .args(args)
        .output()
        .map_err(|source| Error::Spawn {
            command: command.clone(),
            source,
        })?;
    if out.status.success() {
        return Ok(true);
    }
    if check && out.status.code() == Some(1) {
        return Ok(false);
    }
    Err(Error::Failed {
        command,
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

/// Whether `rule` is present.
pub fn rule_exists(rule: &Rule) -> Result<bool, Error> {
    run(&rule.args(Op::Check), true)
}

/// Adds `rule` unless it is present already.
pub fn ensure_rule(rule: &Rule) -> Result<(), Error> {
    if !rule_exists(rule)? {
        run(&rule.args(Op::Add), false)?;
    }
    Ok(())
}

/// Deletes every copy of `rule` (none is fine).
pub fn remove_rule(rule: &Rule) -> Result<(), Error> {
    // A rule appended twice by hand needs two deletes; bound the loop all the same.
    for _ in 0..16 {
        if !rule_exists(rule)? {
            return Ok(());
        }
        run(&rule.args(Op::Delete), false)?;
    }
    Ok(())
}

/// Arguments of `iptables -S CHAIN` in `table` (lists the chain; fails if it is missing).
pub fn list_chain_args(table: &str, chain: &str) -> Vec<String> {
    ["-w", "-t", table, "-S", chain]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

/// Arguments of `iptables -N CHAIN` in `table`.
pub fn new_chain_args(table: &str, chain: &str) -> Vec<String> {
    ["-w", "-t", table, "-N", chain]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

/// Creates chain `chain` in `table` unless it exists.
pub fn ensure_chain(table: &str, chain: &str) -> Result<(), Error> {
    if !run(&list_chain_args(table, chain), true)? {
        run(&new_chain_args(table, chain), false)?;
    }
    Ok(())
}

/// Creates `nat/WEAVE` and `filter/WEAVE-EXPOSE` and hooks them in (`POSTROUTING`, and
/// `FORWARD -o <bridge>`), each only if missing.
pub fn ensure_chains(bridge: &str) -> Result<(), Error> {
    ensure_chain("nat", NAT_CHAIN)?;
    ensure_chain("filter", EXPOSE_CHAIN)?;
    for hook in hook_rules(bridge) {
        ensure_rule(&hook)?;
    }
    Ok(())
}

/// Adds the rules for exposing `addr` on `bridge` (chains and hooks first); idempotent.
pub fn expose(bridge: &str, addr: Ipv4Net, skip_nat: bool) -> Result<(), Error> {
    ensure_chains(bridge)?;
    for rule in expose_rules(addr, skip_nat) {
        ensure_rule(&rule)?;
    }
    Ok(())
}

/// Removes the rules [`expose`] adds for `addr` (the chains and hooks stay); idempotent. With
/// the chains missing there is nothing to remove.
pub fn hide(addr: Ipv4Net) -> Result<(), Error> {
    let nat = run(&list_chain_args("nat", NAT_CHAIN), true)?;
    let filter = run(&list_chain_args("filter", EXPOSE_CHAIN), true)?;
    for rule in hide_rules(addr) {
        let present = match rule.chain {
            NAT_CHAIN => nat,
            _ => filter,
        };
        if present {
            remove_rule(&rule)?;
        }
    }
    Ok(())
}

/// Arguments of `iptables -F CHAIN` and `-X CHAIN` in `table`.
pub fn flush_and_delete_chain_args(table: &str, chain: &str) -> [Vec<String>; 2] {
    let args = |op: &str| {
        ["-w", "-t", table, op, chain]
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    };
    [args("-F"), args("-X")]
}

/// What `weft reset` does to the firewall (as `weave reset`): removes [`forward_rules`],
/// unhooks, flushes and deletes `nat/WEAVE` and `filter/WEAVE-EXPOSE`; whatever is already
/// gone is fine.
pub fn remove_chains(bridge: &str) -> Result<(), Error> {
    for rule in forward_rules(bridge) {
        remove_rule(&rule)?;
    }
    let hooks = hook_rules(bridge);
    for (hook, (table, chain)) in hooks
        .iter()
        .zip([("nat", NAT_CHAIN), ("filter", EXPOSE_CHAIN)])
    {
        // A jump to a missing chain cannot exist (and `-C` of one is an error).
        if run(&list_chain_args(table, chain), true)? {
            remove_rule(hook)?;
            for args in flush_and_delete_chain_args(table, chain) {
                run(&args, false)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn joined(v: Vec<String>) -> String {
        v.join(" ")
    }

    #[test]
    fn masquerade_rule_arguments() {
        let rules = masquerade_rules(net("10.32.1.254/24"));
        let add: Vec<String> = rules.iter().map(|r| joined(r.args(Op::Add))).collect();
        assert_eq!(
            add,
            [
                "-w -t nat -A WEAVE -s 10.32.1.0/24 -d 224.0.0.0/4 -j RETURN",
                "-w -t nat -A WEAVE ! -s 10.32.1.0/24 -d 10.32.1.0/24 -j MASQUERADE",
                "-w -t nat -A WEAVE -s 10.32.1.0/24 ! -d 10.32.1.0/24 -j MASQUERADE",
            ]
        );
        assert_eq!(
            joined(rules[1].args(Op::Check)),
            "-w -t nat -C WEAVE ! -s 10.32.1.0/24 -d 10.32.1.0/24 -j MASQUERADE"
        );
        assert_eq!(
            joined(rules[2].args(Op::Delete)),
            "-w -t nat -D WEAVE -s 10.32.1.0/24 ! -d 10.32.1.0/24 -j MASQUERADE"
        );
    }

    #[test]
    fn accept_and_hooks() {
        assert_eq!(
            joined(accept_rule(net("10.40.0.7/12")).args(Op::Add)),
            "-w -t filter -A WEAVE-EXPOSE -d 10.32.0.0/12 -j ACCEPT"
        );
        let hooks: Vec<String> = hook_rules("weave")
            .iter()
            .map(|r| joined(r.args(Op::Add)))
            .collect();
        assert_eq!(
            hooks,
            [
                "-w -t nat -I POSTROUTING 1 -j WEAVE",
                "-w -t filter -I FORWARD 1 -o weave -j WEAVE-EXPOSE",
            ]
        );
        // Checks and deletes of inserted rules name no position.
        assert_eq!(
            joined(hook_rules("weave")[1].args(Op::Check)),
            "-w -t filter -C FORWARD -o weave -j WEAVE-EXPOSE"
        );
    }

    #[test]
    fn forward_rule_arguments() {
        let add: Vec<String> = forward_rules("weave")
            .iter()
            .map(|r| joined(r.args(Op::Add)))
            .collect();
        assert_eq!(
            add,
            [
                "-w -t filter -I FORWARD 1 -i weave -o weave -j ACCEPT",
                "-w -t filter -I FORWARD 1 -i weave ! -o weave -j ACCEPT",
                "-w -t filter -I FORWARD 1 -o weave -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            ]
        );
    }

    #[test]
    fn forward_rules_in_a_private_netns() {
        let Some(result) = in_private_netns(|| {
            ensure_forward("weave")?;
            ensure_forward("weave")?; // idempotent
            let after = filter_rules();
            remove_chains("weave")?;
            Ok::<_, Error>((after, filter_rules()))
        }) else {
            return;
        };
        let (after, after_reset) = result.unwrap();
        assert_eq!(
            after
                .matches("-A FORWARD -i weave -o weave -j ACCEPT")
                .count(),
            1,
            "{after}"
        );
        assert_eq!(after.matches("-j ACCEPT").count(), 3, "{after}");
        assert!(!after_reset.contains("weave"), "{after_reset}");
    }

    #[test]
    fn skip_nat_leaves_only_the_accept() {
        let a = net("10.32.0.1/12");
        assert_eq!(expose_rules(a, true), vec![accept_rule(a)]);
        assert_eq!(expose_rules(a, false).len(), 4);
        // Hide removes everything expose may have added, either way.
        assert_eq!(hide_rules(a), expose_rules(a, false));
    }

    /// Runs `f` on a thread in a fresh, private network namespace (which goes away with the
    /// thread); `iptables` forked from that thread runs there too. `None` unless root.
    fn in_private_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return None;
        }
        let t = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            f()
        });
        Some(t.join().expect("test thread panicked"))
    }

    fn rules_of(table: &str) -> String {
        let out = Command::new(IPTABLES)
            .args(["-w", "-t", table, "-S"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn nat_rules() -> String {
        rules_of("nat")
    }

    fn filter_rules() -> String {
        rules_of("filter")
    }

    #[test]
    fn expose_and_hide_in_a_private_netns() {
        let Some(result) = in_private_netns(|| {
            let a = net("10.32.1.254/24");
            expose("weave", a, false)?;
            expose("weave", a, false)?; // idempotent
            let after_expose = nat_rules();
            let accept_present = rule_exists(&accept_rule(a))?;
            hide(a)?;
            hide(a)?; // idempotent
            let after_hide = nat_rules();
            let accept_after_hide = rule_exists(&accept_rule(a))?;
            let hooks_left = rule_exists(&hook_rules("weave")[0])?;
            remove_chains("weave")?;
            remove_chains("weave")?; // idempotent
            let after_reset = nat_rules();
            Ok::<_, Error>((
                after_expose,
                accept_present,
                after_hide,
                accept_after_hide,
                hooks_left,
                after_reset,
            ))
        }) else {
            return;
        };
        let (after_expose, accept, after_hide, accept_after_hide, hooks, after_reset) =
            result.unwrap();
        let masq = after_expose.matches("-j MASQUERADE").count();
        assert_eq!(masq, 2, "{after_expose}");
        assert_eq!(
            after_expose.matches("-j RETURN").count(),
            1,
            "{after_expose}"
        );
        assert_eq!(
            after_expose.matches("-A POSTROUTING -j WEAVE").count(),
            1,
            "{after_expose}"
        );
        assert!(accept);
        assert!(!after_hide.contains("10.32.1.0/24"), "{after_hide}");
        assert!(!accept_after_hide);
        assert!(hooks, "hooks stay after hide");
        assert!(!after_reset.contains("WEAVE"), "{after_reset}");
    }

    #[test]
    fn hide_without_chains_is_fine() {
        let Some(r) = in_private_netns(|| hide(net("10.32.0.1/12"))) else {
            return;
        };
        r.unwrap();
    }

    #[test]
    fn chain_arguments_and_errors() {
        assert_eq!(
            joined(list_chain_args("nat", NAT_CHAIN)),
            "-w -t nat -S WEAVE"
        );
        assert_eq!(
            joined(new_chain_args("filter", EXPOSE_CHAIN)),
            "-w -t filter -N WEAVE-EXPOSE"
        );
        let e = Error::Failed {
            command: command_line(IPTABLES, &new_chain_args("nat", NAT_CHAIN)),
            status: "exit status: 4".into(),
            stderr: "iptables: Permission denied".into(),
        };
        assert_eq!(
            e.to_string(),
            "`iptables -w -t nat -N WEAVE` failed (exit status: 4): iptables: Permission denied"
        );
    }
}
