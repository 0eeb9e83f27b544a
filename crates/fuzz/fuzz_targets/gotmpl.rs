//! Fuzz the Go template engine (`weft_gotmpl`) on what `GET /report?format=` and
//! `weave report -f` hand it: arbitrary template text, run over a report shaped like Weave's.
//! Checks: no panic; a template either fails to parse, fails to run with an error, or
//! produces output within the limits it was given.
//!
//! Input layout: the whole input, as (lossy) UTF-8, is the template text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_gotmpl::{Funcs, Limits, Template, Value};

const REPORT: &str = r#"{"Ready":true,"Version":"0.1.0",
 "VersionCheck":{"Enabled":false,"Success":false,"NewVersion":"","NextCheckAt":"0001-01-01T00:00:00Z"},
 "Router":{"Protocol":"weft","ProtocolMinVersion":1,"ProtocolMaxVersion":2,"Encryption":false,
  "PeerDiscovery":true,"Name":"8a:3e:3e:3e:3e:3e","NickName":"h1","Port":6783,
  "Peers":[{"Name":"8a:3e:3e:3e:3e:3e","NickName":"h1","UID":1,"ShortID":1,"Version":2,
   "Connections":[{"Name":"aa:bb:cc:dd:ee:02","NickName":"h2","Address":"192.0.2.2:6783","Outbound":true,"Established":true}]}],
  "Connections":[{"Address":"192.0.2.2:6783","Outbound":true,"State":"established",
   "Info":"sleeve aa:bb:cc:dd:ee:02(h2)","Attrs":{"mtu":1376,"name":"sleeve"}}],
  "TerminationCount":1,"Targets":["192.0.2.2"],"OverlayDiagnostics":{"sleeve":null},"TrustedSubnets":[]},
 "IPAM":{"Paxos":null,"Range":"10.32.0.0/12","RangeNumIPs":1048576,"ActiveIPs":1,"DefaultSubnet":"10.32.0.0/12",
  "Entries":[{"Token":"10.32.0.0","Size":1048576,"Peer":"8a:3e:3e:3e:3e:3e","Nickname":"h1","IsKnownPeer":true,"Version":1}],
  "PendingClaims":[],"PendingAllocates":[]},"DNS":null,"Proxy":null,"Plugin":null,"F":1.5}"#;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let funcs = Funcs::new().with("json", weft_gotmpl::json);
    let Ok(t) = Template::parse_with("format", &text, funcs) else {
        return;
    };
    let report = Value::from_json(REPORT).expect("the sample report is JSON");
    let limits = Limits {
        max_output: 64 << 10,
        max_steps: 100_000,
        max_depth: 20,
    };
    if let Ok(out) = t.execute_with(&report, limits) {
        assert!(out.len() <= limits.max_output);
    }
});
