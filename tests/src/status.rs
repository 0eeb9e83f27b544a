//! Test-support layer: reading `weft status` output (the Weave-compatible text form).

/// One line of `weft status connections`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnLine {
    /// `true` for `->` (we dialled), `false` for `<-`.
    pub outbound: bool,
    /// Remote `ip:port`.
    pub address: String,
    /// `connecting`, `retrying`, `pending`, `established` or `failed`.
    pub state: String,
    /// The rest of the line (peer name and nickname, or the failure reason).
    pub info: String,
    /// The whole line.
    pub line: String,
}

/// Parses the lines of `weft status connections` that start with `->` or `<-`; other lines
/// (headers, blank lines) are skipped.
pub fn parse_connections(text: &str) -> Vec<ConnLine> {
    text.lines()
        .filter_map(|line| {
            let t = line.trim();
            let (outbound, rest) = if let Some(r) = t.strip_prefix("->") {
                (true, r)
            } else if let Some(r) = t.strip_prefix("<-") {
                (false, r)
            } else {
                return None;
            };
            let mut parts = rest.split_whitespace();
            let address = parts.next()?.to_owned();
            let state = parts.next().unwrap_or("").to_owned();
            let info = parts.collect::<Vec<_>>().join(" ");
            Some(ConnLine {
                outbound,
                address,
                state,
                info,
                line: line.to_owned(),
            })
        })
        .collect()
}
