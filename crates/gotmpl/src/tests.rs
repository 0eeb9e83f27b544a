//! Behaviour against Go's documented `text/template` semantics, and the templates Weave's
//! scripts, tests and documentation run over its report.

use crate::{ErrorKind, Funcs, Limits, Template, Value};

/// A report shaped like Weave's (`WeaveStatus`), small.
fn report() -> Value {
    Value::from_json(
        r#"{
        "Ready": true,
        "Version": "2.8.1",
        "VersionCheck": {"Enabled": false, "Success": false, "NewVersion": "", "NextCheckAt": "0001-01-01T00:00:00Z"},
        "Router": {
            "Protocol": "weave", "ProtocolMinVersion": 1, "ProtocolMaxVersion": 2,
            "Encryption": false, "PeerDiscovery": true,
            "Name": "8a:3e:3e:3e:3e:3e", "NickName": "nicknamington", "Port": 6783,
            "Peers": [
                {"Name": "8a:3e:3e:3e:3e:3e", "NickName": "nicknamington", "UID": 1, "ShortID": 1, "Version": 3,
                 "Connections": [{"Name": "aa:bb:cc:dd:ee:02", "NickName": "host2", "Address": "192.0.2.2:6783", "Outbound": true, "Established": true}]},
                {"Name": "aa:bb:cc:dd:ee:02", "NickName": "host2", "UID": 2, "ShortID": 2, "Version": 2, "Connections": null}
            ],
            "Connections": [
                {"Address": "192.0.2.2:6783", "Outbound": true, "State": "established", "Info": "sleeve aa:bb:cc:dd:ee:02(host2)", "Attrs": {"mtu": 1376, "name": "sleeve"}},
                {"Address": "192.0.2.3:6783", "Outbound": true, "State": "failed", "Info": "connection refused", "Attrs": null}
            ],
            "TerminationCount": 0,
            "Targets": ["192.0.2.2", "192.0.2.3"],
            "OverlayDiagnostics": {"sleeve": null},
            "TrustedSubnets": []
        },
        "IPAM": {
            "Paxos": null, "Range": "10.2.0.0/16", "RangeNumIPs": 65536, "ActiveIPs": 3,
            "DefaultSubnet": "10.2.0.0/16",
            "Entries": [{"Token": "10.2.0.0", "Size": 32768, "Peer": "8a:3e:3e:3e:3e:3e", "Nickname": "nicknamington", "IsKnownPeer": true, "Version": 4}],
            "PendingClaims": null, "PendingAllocates": null
        },
        "DNS": null,
        "Proxy": {"Addresses": ["unix:///var/run/weave/weave.sock"]}
    }"#,
    )
    .unwrap()
}

fn weave_funcs() -> Funcs {
    Funcs::new().with("json", crate::json)
}

fn run(t: &str) -> String {
    run_on(t, &report())
}

fn run_on(t: &str, data: &Value) -> String {
    Template::parse_with("format", t, weave_funcs())
        .unwrap_or_else(|e| panic!("parse {t:?}: {e}"))
        .execute(data)
        .unwrap_or_else(|e| panic!("execute {t:?}: {e}"))
}

fn fails(t: &str) -> (ErrorKind, String) {
    let r = Template::parse_with("format", t, weave_funcs()).and_then(|t| t.execute(&report()));
    match r {
        Ok(out) => panic!("{t:?} should fail, printed {out:?}"),
        Err(e) => (e.kind(), e.to_string()),
    }
}

#[test]
fn weave_scripts_templates() {
    // test/700_status_and_report_2_test.sh, 335_rmpeer, 390_peer_name, 150, 175, weave version.
    assert_eq!(
        run("{{.Router.Name}}({{.Router.NickName}})"),
        "8a:3e:3e:3e:3e:3e(nicknamington)"
    );
    assert_eq!(run("{{len .Router.Peers}}"), "2");
    assert_eq!(run("{{.IPAM.DefaultSubnet}}"), "10.2.0.0/16");
    assert_eq!(run("{{.VersionCheck.Enabled}}"), "false");
    assert_eq!(run("{{ .Version }}"), "2.8.1");
    assert_eq!(
        run("{{range .Router.Targets}}{{.}}\n{{end}}"),
        "192.0.2.2\n192.0.2.3\n"
    );
    assert_eq!(
        run(r#"{{range .Router.Targets}}{{.}}{{"\n"}}{{end}}"#),
        "192.0.2.2\n192.0.2.3\n"
    );
    assert_eq!(
        run("{{range .Router.Connections}}{{.Address}} {{.State}}\n{{end}}"),
        "192.0.2.2:6783 established\n192.0.2.3:6783 failed\n"
    );
    assert_eq!(run("{{json .Router.TrustedSubnets}}"), "[]");
    assert_eq!(
        run("{{json .Proxy}}"),
        r#"{"Addresses":["unix:///var/run/weave/weave.sock"]}"#
    );
    assert_eq!(run("{{json .DNS}}"), "null");
}

#[test]
fn weave_status_template_constructs() {
    // The shapes of Weave's own status templates (prog/weaver/http.go).
    let conns = r#"{{range .Router.Connections}}{{if .Outbound}}->{{else}}<-{{end}} {{printf "%-21v" .Address}} {{printf "%-11v" .State}} {{.Info}} {{range $key,$element := .Attrs}}{{if ne $key "name"}}{{$key}}={{$element}}{{end}}{{end}}
{{end}}"#;
    assert_eq!(
        run(conns),
        "-> 192.0.2.2:6783        established sleeve aa:bb:cc:dd:ee:02(host2) mtu=1376\n\
         -> 192.0.2.3:6783        failed      connection refused \n"
    );
    let peers = r#"{{range .Router.Peers}}{{.Name}}({{.NickName}})
{{range .Connections}}   {{if .Outbound}}->{{else}}<-{{end}} {{printf "%-21v" .Address}} {{$nameNickName := printf "%v(%v)" .Name .NickName}}{{printf "%-37v" $nameNickName}} {{if .Established}}established{{else}}pending{{end}}
{{end}}{{end}}"#;
    let out = run(peers);
    assert!(
        out.starts_with(
            "8a:3e:3e:3e:3e:3e(nicknamington)\n   -> 192.0.2.2:6783        aa:bb:cc:dd:ee:02(host2)"
        ),
        "{out}"
    );
    assert!(
        out.ends_with("established\naa:bb:cc:dd:ee:02(host2)\n"),
        "{out}"
    );
    let protocol = "{{.Router.Protocol}} {{if eq .Router.ProtocolMinVersion .Router.ProtocolMaxVersion}}{{.Router.ProtocolMaxVersion}}{{else}}{{.Router.ProtocolMinVersion}}..{{.Router.ProtocolMaxVersion}}{{end}}";
    assert_eq!(run(protocol), "weave 1..2");
    assert_eq!(
        run(
            "{{if .IPAM}}{{if .IPAM.Entries}}ready{{else if .IPAM.Paxos}}paxos{{else}}idle{{end}}{{end}}"
        ),
        "ready"
    );
    assert_eq!(
        run("{{if .DNS}}dns{{end}}{{with .Proxy}}{{index .Addresses 0}}{{end}}"),
        "unix:///var/run/weave/weave.sock"
    );
}

#[test]
fn printing_follows_fmt() {
    let d = Value::from_json(
        r#"{"I": 3, "F": 1000000.0, "H": 2.5, "S": "x", "B": true, "N": null,
            "L": [1, "a", [2]], "M": {"b": 2, "a": 1}, "T": {"X": 1, "Y": "y"}}"#,
    )
    .unwrap();
    assert_eq!(
        run_on("{{.I}} {{.F}} {{.H}} {{.S}} {{.B}} {{.N}}", &d),
        "3 1e+06 2.5 x true <nil>"
    );
    assert_eq!(run_on("{{.L}}", &d), "[1 a [2]]");
    assert_eq!(run_on("{{.M}}", &d), "map[a:1 b:2]");
    assert_eq!(run_on("{{.T}}", &d), "{1 y}");
    // A missing map key is "no value"; `index` gives the element's zero value instead.
    assert_eq!(run_on("{{.M.zz}}", &d), "<no value>");
    assert_eq!(run_on(r#"{{index .M "zz"}}"#, &d), "<nil>");
    assert_eq!(run_on(r#"{{index .M "b"}} {{index .L 2 0}}"#, &d), "2 2");
    assert_eq!(
        run_on("{{1.5}} {{1e3}} {{0x10}} {{'a'}} {{-2}}", &d),
        "1.5 1000 16 97 -2"
    );
    assert_eq!(run_on(r#"{{"a\tb"}} {{`raw\n`}}"#, &d), "a\tb raw\\n");
    assert_eq!(
        run_on("{{print 1 2 \"x\" 3}}|{{println 1 \"x\"}}", &d),
        "1 2x3|1 x\n"
    );
    assert_eq!(
        run_on("{{printf \"%05.1f|%x|%q\" .H 255 .S}}", &d),
        "002.5|ff|\"x\""
    );
    assert_eq!(run_on("{{.S | printf \"%s-%s\" \"a\"}}", &d), "a-x");
}

#[test]
fn truth_and_logic() {
    let d = Value::from_json(
        r#"{"Zero": 0, "One": 1, "Empty": "", "E": [], "L": [0], "M": {}, "S": {"A": 0}, "N": null}"#,
    )
    .unwrap();
    let t = "{{if .Zero}}1{{end}}{{if .One}}2{{end}}{{if .Empty}}3{{end}}{{if .E}}4{{end}}{{if .L}}5{{end}}{{if .M}}6{{end}}{{if .S}}7{{end}}{{if .N}}8{{end}}";
    assert_eq!(run_on(t, &d), "257");
    assert_eq!(
        run_on(
            "{{and 1 0 2}} {{and 1 2}} {{or 0 \"\" 3}} {{or 0 \"\"}} {{not 0}}",
            &d
        ),
        "0 2 3  true"
    );
    // `and` stops at the first false argument: the failing field is never evaluated.
    assert_eq!(run_on("{{and .Zero .N.Missing}}", &d), "0");
    assert_eq!(run_on("{{or .One .N.Missing}}", &d), "1");
    assert_eq!(run_on("{{if and .One (not .Zero)}}yes{{end}}", &d), "yes");
    assert_eq!(
        run_on(
            "{{if eq .One 1 2}}a{{end}}{{if ne .Empty \"x\"}}b{{end}}{{if lt .Zero .One}}c{{end}}",
            &d
        ),
        "abc"
    );
}

#[test]
fn variables_range_and_scoping() {
    let d = Value::from_json(r#"{"L": ["a", "b", "c"], "M": {"y": 2, "x": 1}}"#).unwrap();
    assert_eq!(
        run_on("{{range $i, $e := .L}}{{$i}}={{$e}} {{end}}", &d),
        "0=a 1=b 2=c "
    );
    assert_eq!(run_on("{{range $e := .L}}{{$e}}{{end}}", &d), "abc");
    assert_eq!(
        run_on("{{range $k, $v := .M}}{{$k}}{{$v}}{{end}}", &d),
        "x1y2"
    );
    assert_eq!(run_on("{{range .L}}{{.}}{{$.M.x}}{{end}}", &d), "a1b1c1");
    assert_eq!(
        run_on(
            "{{range .Nope}}x{{else}}empty{{end}}",
            &Value::from_json(r#"{"Nope": null}"#).unwrap()
        ),
        "empty"
    );
    assert_eq!(
        run_on(
            "{{range .L}}{{if eq . \"b\"}}{{continue}}{{end}}{{.}}{{end}}",
            &d
        ),
        "ac"
    );
    assert_eq!(
        run_on(
            "{{range .L}}{{if eq . \"b\"}}{{break}}{{end}}{{.}}{{end}}",
            &d
        ),
        "a"
    );
    assert_eq!(
        run_on("{{$x := 1}}{{if true}}{{$x = 2}}{{end}}{{$x}}", &d),
        "2"
    );
    assert_eq!(
        run_on("{{$x := 1}}{{range .L}}{{$x = .}}{{end}}{{$x}}", &d),
        "c"
    );
    assert_eq!(run_on("{{with $y := .M.x}}{{$y}}{{.}}{{end}}", &d), "11");
    assert_eq!(
        run_on("{{with .M.zz}}a{{else with .M.y}}{{.}}{{else}}c{{end}}", &d),
        "2"
    );
    assert_eq!(
        run_on("{{if false}}a{{else if false}}b{{else}}c{{end}}", &d),
        "c"
    );
    assert_eq!(run_on("{{len (slice .L 1)}} {{index .L 1}}", &d), "2 b");
}

#[test]
fn trimming_comments_definitions() {
    let d = Value::from_json(r#"{"A": "x"}"#).unwrap();
    assert_eq!(run_on("a  {{- .A -}}  \n b", &d), "axb");
    assert_eq!(run_on("a {{/* comment */}}b", &d), "a b");
    assert_eq!(
        run_on("{{define \"t\"}}[{{.}}]{{end}}{{template \"t\" .A}}", &d),
        "[x]"
    );
    assert_eq!(run_on("{{block \"b\" .A}}<{{.}}>{{end}}", &d), "<x>");
    assert_eq!(
        run_on("{{template \"t\"}}{{define \"t\"}}{{.}}{{end}}", &d),
        "<no value>"
    );
}

#[test]
fn mistakes_are_errors_with_reasons() {
    // A misspelt field of a struct: Go's "can't evaluate field".
    let (k, e) = fails("{{.Router.Nmae}}");
    assert_eq!(k, ErrorKind::Exec);
    assert!(
        e.contains("can't evaluate field Nmae") && e.contains("<.Router.Nmae>"),
        "{e}"
    );
    // A field of nil (DNS is off): Go's nil pointer error, not an empty string.
    let (_, e) = fails("{{.DNS.Domain}}");
    assert!(e.contains("nil pointer evaluating"), "{e}");
    let (k, e) = fails("{{range .Router.Peers}}");
    assert_eq!(k, ErrorKind::Parse);
    assert!(e.contains("unexpected EOF"), "{e}");
    let (k, e) = fails("{{nosuchfunc 1}}");
    assert_eq!(k, ErrorKind::Parse);
    assert_eq!(e, "template: format:1: function \"nosuchfunc\" not defined");
    let (_, e) = fails("line1\n{{$x}}");
    assert_eq!(e, "template: format:2: undefined variable \"$x\"");
    let (_, e) = fails("{{.Router.Name");
    assert!(e.contains("unclosed action"), "{e}");
    let (_, e) = fails("{{end}}");
    assert!(e.contains("unexpected {{end}}"), "{e}");
    let (_, e) = fails("{{break}}");
    assert!(e.contains("{{break}} outside {{range}}"), "{e}");
    let (_, e) = fails("{{len 1 2}}");
    assert!(
        e.contains("wrong number of args for len: want 1 got 2"),
        "{e}"
    );
    let (_, e) = fails("{{len .Router.Port}}");
    assert!(e.contains("error calling len: len of type int"), "{e}");
    let (_, e) = fails("{{index .Router.Targets 5}}");
    assert!(e.contains("index out of range: 5"), "{e}");
    let (_, e) = fails("{{.Router.Name 1}}");
    assert!(e.contains("cannot be invoked as function"), "{e}");
    let (_, e) = fails("{{\"x\" 1}}");
    assert!(e.contains("can't give argument to non-function"), "{e}");
    let (_, e) = fails("{{.Router | \"x\"}}");
    assert!(
        e.contains("non executable command in pipeline stage 2"),
        "{e}"
    );
    let (_, e) = fails("{{nil}}");
    assert!(e.contains("nil is not a command"), "{e}");
    let (_, e) = fails("{{range .Router.Port}}{{end}}");
    assert!(e.contains("range can't iterate over 6783"), "{e}");
    let (_, e) = fails("{{template \"nope\"}}");
    assert!(e.contains("no such template \"nope\""), "{e}");
    let (_, e) = fails("{{eq .Router.Port \"6783\"}}");
    assert!(e.contains("incompatible types for comparison"), "{e}");
    let (_, e) = fails("{{printf 3}}");
    assert!(e.contains("expected string"), "{e}");
}

#[test]
fn limits_stop_runaway_templates() {
    let d = Value::from_json(r#"{"L": [1,2,3,4,5,6,7,8,9,10]}"#).unwrap();
    let nested = "{{range .L}}{{range $.L}}{{range $.L}}{{range $.L}}{{range $.L}}{{range $.L}}x{{end}}{{end}}{{end}}{{end}}{{end}}{{end}}";
    let t = Template::parse("f", nested).unwrap();
    let e = t.execute(&d).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Limit, "{e}");
    let small = Limits {
        max_output: 10,
        ..Limits::default()
    };
    let e = Template::parse("f", "{{range .L}}xx{{end}}")
        .unwrap()
        .execute_with(&d, small)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Limit);
    let e = Template::parse(
        "f",
        "{{define \"r\"}}{{template \"r\"}}{{end}}{{template \"r\"}}",
    )
    .unwrap()
    .execute(&d)
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Limit);
    let deep = format!("{}1{}", "{{(".repeat(0), "");
    assert!(Template::parse("f", &deep).is_ok());
    let deep = format!("{{{{{}1{}}}}}", "(".repeat(500), ")".repeat(500));
    let e = Template::parse("f", &deep).unwrap_err();
    assert!(e.to_string().contains("nesting too deep"), "{e}");
    let deep = "{{if 1}}".repeat(500);
    assert!(Template::parse("f", &deep).is_err());
}

#[test]
fn json_keeps_go_key_order_and_escapes() {
    let d =
        Value::from_json(r#"{"Z": 1, "A": {"y": [true, null], "x": 1.5}, "H": "<&>"}"#).unwrap();
    assert_eq!(
        run_on("{{json .}}", &d),
        r#"{"Z":1,"A":{"x":1.5,"y":[true,null]},"H":"\u003c\u0026\u003e"}"#
    );
    assert_eq!(
        run_on("{{json 1e21}} {{json 0.000001}} {{json 1e-7}}", &d),
        "1e+21 0.000001 1e-7"
    );
}

proptest::proptest! {
    /// Any text either parses or fails with a parse error; parsed templates run to a result or
    /// an error, never a panic.
    #[test]
    fn never_panics(text in "[{}$.|()a-zA-Z0-9 \"'`:=,\\-/*\n]{0,60}") {
        if let Ok(t) = Template::parse_with("f", &text, weave_funcs()) {
            let _ = t.execute_with(&report(), Limits { max_steps: 10_000, ..Limits::default() });
        }
    }

    /// Plain text without delimiters comes back unchanged.
    #[test]
    fn text_passes_through(text in "[^{}]{0,80}") {
        proptest::prop_assert_eq!(run_on(&text, &Value::Nil), text);
    }
}
