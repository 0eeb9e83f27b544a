//! weaveDNS in Docker API bodies (Weave's `proxy/create_container_interceptor.go` and the
//! `weave` script's `with_container_fqdn`):
//!
//! - [`HostnameRule`]: the hostname a container gets from its name (`--hostname-from-label`,
//!   `--hostname-match`, `--hostname-replacement`);
//! - [`rewrite_create`]: a joining container without a hostname gets `NAME.<domain>`, and its
//!   resolver is weaveDNS (`--dns ADDR`, `--dns-search`), unless the proxy runs `--without-dns`;
//! - [`container_fqdn`]: the name an inspected container registers, if it has one.

use regex::Regex;
use serde_json::{Value, json};

/// Docker's limit on a container's hostname.
pub const MAX_DOCKER_HOSTNAME: usize = 64;

/// How a container's name becomes its hostname.
#[derive(Debug, Clone)]
pub struct HostnameRule {
    /// Take the hostname from this label when the container has it (`--hostname-from-label`).
    pub from_label: Option<String>,
    /// Applied to the name (`--hostname-match`, default `(.*)`).
    pub matcher: Regex,
    /// What a match becomes (`--hostname-replacement`, default `$1`).
    pub replacement: String,
}

impl Default for HostnameRule {
    fn default() -> Self {
        Self::new(None, "(.*)", "$1").expect("the default pattern compiles")
    }
}

impl HostnameRule {
    /// A rule from the proxy's flags; `Err` says what is wrong with the pattern.
    pub fn new(
        from_label: Option<String>,
        pattern: &str,
        replacement: &str,
    ) -> Result<Self, String> {
        let matcher = Regex::new(pattern)
            .map_err(|e| format!("incorrect hostname match '{pattern}': {e}"))?;
        Ok(Self {
            from_label: from_label.filter(|l| !l.is_empty()),
            matcher,
            replacement: replacement.to_owned(),
        })
    }

    /// The hostname for a container created as `name` (the `?name=` of the create call,
    /// possibly empty) with the create body `body`: the label's value if set, else the name,
    /// then rewritten by the pattern (every match replaced, as Go's `ReplaceAllString`).
    pub fn hostname(&self, name: &str, body: &Value) -> String {
        let base = self
            .from_label
            .as_ref()
            .and_then(|l| body["Labels"][l].as_str())
            .filter(|v| !v.is_empty())
            .unwrap_or(name);
        self.matcher
            .replace_all(base, self.replacement.as_str())
            .into_owned()
    }
}

/// Points a joining container's create body at weaveDNS: a container without a hostname gets
/// `hostname` in the domain (when it fits Docker's limit); `dns_addr` is added to its
/// nameservers; with no search domain given, it searches the domain when it got no name, and
/// nothing (`.`) when it did, as Weave does. `domain` has or lacks the trailing dot.
pub fn rewrite_create(body: &mut Value, hostname: &str, domain: &str, dns_addr: Option<&str>) {
    if !body.is_object() {
        return;
    }
    let domain_nodot = domain.trim_end_matches('.');
    let unset = body["Hostname"].as_str().is_none_or(str::is_empty);
    // A name too long for Docker's hostname is left out (as Weave warns and skips it).
    let fits = hostname.len() + 1 + domain_nodot.len() <= MAX_DOCKER_HOSTNAME;
    if unset && !hostname.is_empty() && fits {
        body["Hostname"] = json!(hostname);
        body["Domainname"] = json!(domain_nodot);
    }
    let Some(addr) = dns_addr else {
        return;
    };
    if !body["HostConfig"].is_object() {
        body["HostConfig"] = json!({});
    }
    let hc = &mut body["HostConfig"];
    let mut dns: Vec<Value> = hc["Dns"].as_array().cloned().unwrap_or_default();
    if !dns.iter().any(|d| d.as_str() == Some(addr)) {
        dns.push(json!(addr));
    }
    hc["Dns"] = Value::Array(dns);
    let search_empty = hc["DnsSearch"].as_array().is_none_or(Vec::is_empty);
    if search_empty {
        let search = if hostname.is_empty() {
            fqdn(domain)
        } else {
            ".".to_owned()
        };
        hc["DnsSearch"] = json!([search]);
    }
}

/// The fully qualified name an inspected container registers: `Config.Hostname` plus
/// `Config.Domainname`, if that makes a name with a domain (a bare hostname registers
/// nothing, as in Weave).
pub fn container_fqdn(inspect: &Value) -> Option<String> {
    let host = inspect["Config"]["Hostname"].as_str().unwrap_or("");
    let domain = inspect["Config"]["Domainname"].as_str().unwrap_or("");
    if host.is_empty() {
        return None;
    }
    let name = if domain.is_empty() {
        fqdn(host)
    } else {
        fqdn(&format!("{host}.{domain}"))
    };
    let first = name.split('.').next().unwrap_or("");
    (format!("{first}.") != name).then_some(name)
}

fn fqdn(s: &str) -> String {
    if s.ends_with('.') {
        s.to_owned()
    } else {
        format!("{s}.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_from_names_and_labels() {
        let body = json!({"Labels": {"app": "web-frontend", "empty": ""}});
        let plain = HostnameRule::default();
        assert_eq!(plain.hostname("chronos1", &body), "chronos1");
        assert_eq!(plain.hostname("", &body), "");
        let label = HostnameRule::new(Some("app".into()), "(.*)", "$1").unwrap();
        assert_eq!(label.hostname("c1", &body), "web-frontend");
        let empty = HostnameRule::new(Some("empty".into()), "(.*)", "$1").unwrap();
        assert_eq!(empty.hostname("c1", &body), "c1");
        let aws = HostnameRule::new(None, "^aws-[0-9]+-(.*)$", "my-app-$1").unwrap();
        assert_eq!(aws.hostname("aws-12-db", &body), "my-app-db");
        assert_eq!(aws.hostname("other", &body), "other");
        assert!(HostnameRule::new(None, "(", "$1").is_err());
    }

    #[test]
    fn create_gets_hostname_and_resolver() {
        let mut body = json!({"Image": "bb", "HostConfig": {"Dns": ["192.0.2.1"]}});
        rewrite_create(&mut body, "chronos1", "weave.local.", Some("10.32.1.1"));
        assert_eq!(body["Hostname"], "chronos1");
        assert_eq!(body["Domainname"], "weave.local");
        assert_eq!(body["HostConfig"]["Dns"], json!(["192.0.2.1", "10.32.1.1"]));
        assert_eq!(body["HostConfig"]["DnsSearch"], json!(["."]));
        // Idempotent.
        let before = body.clone();
        rewrite_create(&mut body, "chronos1", "weave.local.", Some("10.32.1.1"));
        assert_eq!(body, before);
        // A hostname given by the user stays; no name: search the domain.
        let mut body = json!({"Hostname": "chronos1.weave.local", "HostConfig": null});
        rewrite_create(&mut body, "", "weave.local.", Some("10.32.1.1"));
        assert_eq!(body["Hostname"], "chronos1.weave.local");
        assert!(body["Domainname"].is_null());
        assert_eq!(body["HostConfig"]["DnsSearch"], json!(["weave.local."]));
        // The user's search domains stay; a name too long for Docker is left out.
        let mut body = json!({"HostConfig": {"DnsSearch": ["example.com"]}});
        rewrite_create(
            &mut body,
            &"x".repeat(60),
            "weave.local.",
            Some("10.32.1.1"),
        );
        assert!(body["Hostname"].is_null());
        assert_eq!(body["HostConfig"]["DnsSearch"], json!(["example.com"]));
        // Without an address only the hostname is set; odd bodies are left alone.
        let mut body = json!({});
        rewrite_create(&mut body, "a", "weave.local", None);
        assert_eq!(body, json!({"Hostname": "a", "Domainname": "weave.local"}));
        let mut odd = json!([1]);
        rewrite_create(&mut odd, "a", "weave.local", Some("x"));
        assert_eq!(odd, json!([1]));
    }

    #[test]
    fn registered_names() {
        let i = |h: &str, d: &str| json!({"Config": {"Hostname": h, "Domainname": d}});
        assert_eq!(
            container_fqdn(&i("chronos1.weave.local", "")).as_deref(),
            Some("chronos1.weave.local.")
        );
        assert_eq!(
            container_fqdn(&i("chronos1", "weave.local")).as_deref(),
            Some("chronos1.weave.local.")
        );
        assert_eq!(container_fqdn(&i("4f3c2a1b", "")), None);
        assert_eq!(container_fqdn(&i("", "weave.local")), None);
        assert_eq!(container_fqdn(&json!({})), None);
    }
}
