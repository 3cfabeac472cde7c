//! The nf_tables encoders against a real kernel, read back with `nft -j`.
//!
//! These cover the encoders the ruleset does not use yet (interval and timeout sets, maps
//! with data values, dynset, counter, ct, reject with tcp reset, snat, masquerade) and how
//! a batch with one bad message fails as a whole. Each test moves its own thread into a
//! fresh network namespace with `unshare(CLONE_NEWNET)`; `nft` runs as a child of that
//! thread, so it sees the same namespace. Nothing touches the host's ruleset.
//!
//! Needs root and the `nft` binary, so every test here is `#[ignore]`d: a plain `cargo test`
//! lists them as ignored, never as passed. `make test` runs them with `--ignored` as root or
//! when `CI` is set, and then a missing prerequisite fails the test.

use std::collections::BTreeMap;
use std::io;
use std::process::Command;

use waolb_native::netlink::{Batch, BatchError, MessageTag, Socket, NO_SUBJECT};
use waolb_native::nft::{
    self, Element, ElementData, Family, Hook, RuleBuilder, SetData, SetSpec, TableRef, Verdict,
};

const TABLE: &str = "waolb-kernel-test";

/// Moves this thread into a private network namespace; a missing prerequisite fails the test,
/// which only runs when asked for (see the module's documentation).
fn private_netns() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "needs root (CAP_SYS_ADMIN for unshare, CAP_NET_ADMIN)"
    );
    assert!(
        Command::new("nft").arg("--version").output().is_ok(),
        "needs the nft command"
    );
    // SAFETY: unshare(CLONE_NEWNET) only changes this thread's network namespace.
    let status = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        status,
        0,
        "unshare(CLONE_NEWNET): {}",
        io::Error::last_os_error()
    );
}

/// Runs `nft` with `args` in this thread's namespace; returns (success, stdout, stderr).
fn nft_cmd(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("nft").args(args).output().expect("run nft");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tag(action: &'static str) -> MessageTag {
    MessageTag {
        action,
        subject: NO_SUBJECT,
    }
}

/// Sends a batch; every error the kernel reported (none: committed).
fn send(batch: Batch) -> Vec<BatchError> {
    let mut socket = Socket::open().expect("netlink socket");
    let (wire, tags, first_seq) = batch.finish();
    socket
        .send_batch(&wire, &tags, first_seq)
        .expect("netlink I/O")
}

// ---- a small JSON reader, enough for nft's output ------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(BTreeMap<String, Json>),
}

impl Json {
    fn parse(text: &str) -> Json {
        let mut parser = Parser {
            bytes: text.as_bytes(),
            pos: 0,
        };
        let value = parser.value();
        parser.skip_ws();
        assert_eq!(parser.pos, parser.bytes.len(), "trailing text in {text}");
        value
    }

    /// `self[key]`; panics with the object when the key is missing.
    fn at(&self, key: &str) -> &Json {
        match self {
            Json::Obj(map) => map
                .get(key)
                .unwrap_or_else(|| panic!("no {key:?} in {self}")),
            other => panic!("{other} is not an object (looking for {key:?})"),
        }
    }

    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(map) => map.get(key),
            _ => None,
        }
    }

    fn items(&self) -> &[Json] {
        match self {
            Json::Arr(items) => items,
            other => panic!("{other} is not an array"),
        }
    }
}

impl std::fmt::Display for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Json::Null => write!(f, "null"),
            Json::Bool(b) => write!(f, "{b}"),
            Json::Num(n) => write!(f, "{n}"),
            Json::Str(s) => write!(f, "{s:?}"),
            Json::Arr(items) => {
                write!(f, "[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{item}")?;
                }
                write!(f, "]")
            }
            Json::Obj(map) => {
                write!(f, "{{")?;
                for (i, (key, value)) in map.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{key:?}: {value}")?;
                }
                write!(f, "}}")
            }
        }
    }
}

struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.pos < self.bytes.len() && self.bytes[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn eat(&mut self, byte: u8) {
        self.skip_ws();
        assert_eq!(
            self.bytes.get(self.pos),
            Some(&byte),
            "expected {:?} at {}",
            byte as char,
            self.pos
        );
        self.pos += 1;
    }

    fn peek(&mut self) -> u8 {
        self.skip_ws();
        *self.bytes.get(self.pos).expect("unexpected end of JSON")
    }

    fn value(&mut self) -> Json {
        match self.peek() {
            b'{' => {
                self.eat(b'{');
                let mut map = BTreeMap::new();
                if self.peek() == b'}' {
                    self.pos += 1;
                    return Json::Obj(map);
                }
                loop {
                    let key = self.string();
                    self.eat(b':');
                    map.insert(key, self.value());
                    match self.peek() {
                        b',' => self.pos += 1,
                        _ => {
                            self.eat(b'}');
                            return Json::Obj(map);
                        }
                    }
                }
            }
            b'[' => {
                self.eat(b'[');
                let mut items = Vec::new();
                if self.peek() == b']' {
                    self.pos += 1;
                    return Json::Arr(items);
                }
                loop {
                    items.push(self.value());
                    match self.peek() {
                        b',' => self.pos += 1,
                        _ => {
                            self.eat(b']');
                            return Json::Arr(items);
                        }
                    }
                }
            }
            b'"' => Json::Str(self.string()),
            b't' => self.word("true", Json::Bool(true)),
            b'f' => self.word("false", Json::Bool(false)),
            b'n' => self.word("null", Json::Null),
            _ => {
                let start = self.pos;
                while self.pos < self.bytes.len()
                    && matches!(
                        self.bytes[self.pos],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.pos += 1;
                }
                let text = std::str::from_utf8(&self.bytes[start..self.pos]).unwrap();
                Json::Num(
                    text.parse()
                        .unwrap_or_else(|_| panic!("bad number {text:?}")),
                )
            }
        }
    }

    fn word(&mut self, word: &str, value: Json) -> Json {
        assert!(self.bytes[self.pos..].starts_with(word.as_bytes()));
        self.pos += word.len();
        value
    }

    fn string(&mut self) -> String {
        self.eat(b'"');
        let mut out = String::new();
        loop {
            let byte = self.bytes[self.pos];
            self.pos += 1;
            match byte {
                b'"' => return out,
                b'\\' => {
                    let escaped = self.bytes[self.pos];
                    self.pos += 1;
                    match escaped {
                        b'n' => out.push('\n'),
                        b't' => out.push('\t'),
                        b'r' => out.push('\r'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'u' => {
                            let hex =
                                std::str::from_utf8(&self.bytes[self.pos..self.pos + 4]).unwrap();
                            self.pos += 4;
                            let code = u32::from_str_radix(hex, 16).unwrap();
                            out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                        }
                        other => out.push(other as char),
                    }
                }
                _ => {
                    // Copy a whole UTF-8 sequence.
                    let start = self.pos - 1;
                    let mut end = self.pos;
                    while end < self.bytes.len() && (self.bytes[end] & 0xc0) == 0x80 {
                        end += 1;
                    }
                    out.push_str(std::str::from_utf8(&self.bytes[start..end]).unwrap());
                    self.pos = end;
                }
            }
        }
    }
}

/// `nft -j list table ip TABLE`, split into its sets/maps, chains and rules (by chain).
struct Listing {
    sets: BTreeMap<String, Json>,
    chains: BTreeMap<String, Json>,
    rules: BTreeMap<String, Vec<Json>>,
    comments: BTreeMap<String, Vec<Option<String>>>,
}

fn list_table(table: &str) -> Option<Listing> {
    let (ok, stdout, stderr) = nft_cmd(&["-j", "list", "table", "ip", table]);
    if !ok {
        assert!(stderr.contains("No such file or directory"), "{stderr}");
        return None;
    }
    let mut listing = Listing {
        sets: BTreeMap::new(),
        chains: BTreeMap::new(),
        rules: BTreeMap::new(),
        comments: BTreeMap::new(),
    };
    for item in Json::parse(&stdout).at("nftables").items() {
        let Json::Obj(map) = item else {
            panic!("{item}")
        };
        let (kind, body) = map.iter().next().unwrap();
        let name = || match body.get("name") {
            Some(Json::Str(name)) => name.clone(),
            _ => panic!("{body}"),
        };
        match kind.as_str() {
            "set" | "map" => {
                listing.sets.insert(name(), body.clone());
            }
            "chain" => {
                listing.chains.insert(name(), body.clone());
            }
            "rule" => {
                let Json::Str(chain) = body.at("chain") else {
                    panic!("{body}")
                };
                listing
                    .rules
                    .entry(chain.clone())
                    .or_default()
                    .push(body.at("expr").clone());
                let comment = match body.get("comment") {
                    Some(Json::Str(text)) => Some(text.clone()),
                    _ => None,
                };
                listing
                    .comments
                    .entry(chain.clone())
                    .or_default()
                    .push(comment);
            }
            _ => {}
        }
    }
    Some(listing)
}

fn j(text: &str) -> Json {
    Json::parse(text)
}

// ---- the tests ------------------------------------------------------------------------------

const T: TableRef<'static> = TableRef {
    family: Family::Ip,
    name: TABLE,
};

fn ip(text: &str) -> [u8; 4] {
    text.parse::<std::net::Ipv4Addr>().unwrap().octets()
}

/// Key bytes of `addr . port`, each field padded to a 32-bit register.
fn addr_port(addr: &str, port: u16) -> Vec<u8> {
    let mut key = ip(addr).to_vec();
    key.extend_from_slice(&port.to_be_bytes());
    key.extend_from_slice(&[0, 0]);
    key
}

fn element<'a>(key: &'a [u8], data: ElementData<'a>) -> (Element<'a>, MessageTag) {
    (
        Element {
            key,
            data,
            interval_end: false,
            timeout_ms: None,
        },
        tag("add element"),
    )
}

#[test]
#[ignore = "needs root and nft: make test runs it"]
fn encoders_round_trip_through_nft() {
    private_netns();
    let mut batch = Batch::new(1);
    nft::add_table(&mut batch, T, tag("add table"));

    // An interval set: two prefixes and a range, each as start + interval-end element.
    let addr = [(nft::TYPE_IPADDR, 4)];
    let interval = SetSpec {
        name: "nets",
        key: &addr,
        key_byteorder: nft::BYTEORDER_BIG,
        data: SetData::None,
        flags: nft::SET_INTERVAL,
        timeout_ms: None,
    };
    nft::add_set(&mut batch, T, &interval, 1, tag("add set"));
    let bounds = [
        ("10.0.0.0", false),
        ("10.0.1.0", true),
        ("172.16.0.5", false),
        ("172.16.0.10", true),
        ("192.168.0.0", false),
        ("192.169.0.0", true),
    ];
    let keys: Vec<[u8; 4]> = bounds.iter().map(|(a, _)| ip(a)).collect();
    nft::set_elements(
        &mut batch,
        T,
        "nets",
        false,
        keys.iter().zip(bounds).map(|(key, (_, end))| {
            (
                Element {
                    key,
                    data: ElementData::None,
                    interval_end: end,
                    timeout_ms: None,
                },
                tag("add interval element"),
            )
        }),
    );

    // A dynamic set with a default timeout, and one element with its own.
    let recent = SetSpec {
        name: "recent",
        key: &addr,
        key_byteorder: nft::BYTEORDER_BIG,
        data: SetData::None,
        flags: nft::SET_TIMEOUT | nft::SET_EVAL,
        timeout_ms: Some(30_000),
    };
    nft::add_set(&mut batch, T, &recent, 2, tag("add set"));
    let seen = ip("192.0.2.1");
    nft::set_elements(
        &mut batch,
        T,
        "recent",
        false,
        [(
            Element {
                key: &seen,
                data: ElementData::None,
                interval_end: false,
                timeout_ms: Some(3_600_000),
            },
            tag("add timed element"),
        )],
    );

    // Concatenated keys mapping to a mark, and to an address . port (concatenated data).
    let addr_service = [(nft::TYPE_IPADDR, 4), (nft::TYPE_INET_SERVICE, 2)];
    let marks = SetSpec {
        name: "marks",
        key: &addr_service,
        key_byteorder: nft::BYTEORDER_BIG,
        data: SetData::Value {
            type_id: nft::TYPE_MARK,
            len: 4,
            byteorder: nft::BYTEORDER_HOST,
        },
        flags: 0,
        timeout_ms: None,
    };
    nft::add_set(&mut batch, T, &marks, 3, tag("add map"));
    let (k1, k2) = (addr_port("10.1.0.1", 80), addr_port("10.1.0.2", 443));
    let (m1, m2) = (0x10u32.to_ne_bytes(), 0x20u32.to_ne_bytes());
    nft::set_elements(
        &mut batch,
        T,
        "marks",
        false,
        [
            element(&k1, ElementData::Value(&m1)),
            element(&k2, ElementData::Value(&m2)),
        ],
    );
    let backends = SetSpec {
        name: "backends",
        key: &addr_service,
        key_byteorder: nft::BYTEORDER_BIG,
        data: SetData::Value {
            type_id: nft::concat_type(&[nft::TYPE_IPADDR, nft::TYPE_INET_SERVICE]),
            len: nft::key_len(&addr_service),
            byteorder: nft::BYTEORDER_BIG,
        },
        flags: 0,
        timeout_ms: None,
    };
    nft::add_set(&mut batch, T, &backends, 4, tag("add map"));
    let (vip, backend) = (addr_port("10.96.0.10", 80), addr_port("10.244.0.10", 8080));
    nft::set_elements(
        &mut batch,
        T,
        "backends",
        false,
        [element(&vip, ElementData::Value(&backend))],
    );

    let hook = |kind, hooknum, priority| {
        Some(Hook {
            kind,
            hooknum,
            priority,
        })
    };
    nft::add_chain(
        &mut batch,
        T,
        "input",
        hook("filter", nft::HOOK_INPUT, 0),
        tag("add chain"),
    );
    nft::add_chain(
        &mut batch,
        T,
        "prerouting",
        hook("nat", nft::HOOK_PREROUTING, -100),
        tag("add chain"),
    );
    nft::add_chain(
        &mut batch,
        T,
        "postrouting",
        hook("nat", nft::HOOK_POSTROUTING, 100),
        tag("add chain"),
    );
    let r0 = nft::REG32_00;
    let saddr = |rule: &mut RuleBuilder<'_>, reg| {
        rule.payload(nft::PAYLOAD_NETWORK, 12, 4, reg);
    };
    let tcp = |rule: &mut RuleBuilder<'_>| {
        rule.meta_load(nft::META_L4PROTO, r0)
            .cmp(nft::CMP_EQ, r0, &[6]);
    };

    // ip saddr @nets counter accept
    let mut rule = RuleBuilder::new(&mut batch, T, "input", tag("add rule"));
    saddr(&mut rule, r0);
    rule.lookup("nets", r0, None, 0)
        .counter()
        .verdict(Verdict::Accept);
    rule.finish(Some("known networks"));
    // ip saddr != @nets update @recent { ip saddr timeout 10s }
    let mut rule = RuleBuilder::new(&mut batch, T, "input", tag("add rule"));
    saddr(&mut rule, r0);
    rule.lookup("nets", r0, None, nft::LOOKUP_INVERT).dynset(
        "recent",
        nft::DYNSET_UPDATE,
        r0,
        None,
        Some(10_000),
    );
    rule.finish(None);
    // ct status dnat counter
    let mut rule = RuleBuilder::new(&mut batch, T, "input", tag("add rule"));
    rule.ct_load(nft::CT_STATUS, r0)
        .bitwise(r0, r0, &nft::CT_STATUS_DNAT.to_ne_bytes(), &[0; 4])
        .cmp(nft::CMP_NEQ, r0, &[0; 4])
        .counter();
    rule.finish(None);
    // meta l4proto tcp reject with tcp reset
    let mut rule = RuleBuilder::new(&mut batch, T, "input", tag("add rule"));
    tcp(&mut rule);
    rule.reject(nft::REJECT_TCP_RST, 0);
    rule.finish(None);

    // meta l4proto tcp meta mark set ip daddr . tcp dport map @marks
    let r1 = nft::reg_after(r0, 4);
    let daddr_dport = |rule: &mut RuleBuilder<'_>| {
        rule.payload(nft::PAYLOAD_NETWORK, 16, 4, r0)
            .payload(nft::PAYLOAD_TRANSPORT, 2, 2, r1);
    };
    let mut rule = RuleBuilder::new(&mut batch, T, "prerouting", tag("add rule"));
    tcp(&mut rule);
    daddr_dport(&mut rule);
    rule.lookup("marks", r0, Some(r0), 0)
        .meta_set(nft::META_MARK, r0);
    rule.finish(None);
    // meta l4proto tcp dnat ip to ip daddr . tcp dport map @backends
    let mut rule = RuleBuilder::new(&mut batch, T, "prerouting", tag("add rule"));
    tcp(&mut rule);
    daddr_dport(&mut rule);
    rule.lookup("backends", r0, Some(r0), 0)
        .nat(nft::NAT_DNAT, Family::Ip, r0, Some(r1), 0);
    rule.finish(None);

    // ip saddr 10.0.0.0/24 meta l4proto tcp snat to 203.0.113.1:1024
    let mut rule = RuleBuilder::new(&mut batch, T, "postrouting", tag("add rule"));
    saddr(&mut rule, r0);
    rule.bitwise(r0, r0, &ip("255.255.255.0"), &[0; 4])
        .cmp(nft::CMP_EQ, r0, &ip("10.0.0.0"));
    tcp(&mut rule);
    rule.immediate(r0, &ip("203.0.113.1"))
        .immediate(r1, &1024u16.to_be_bytes())
        .nat(nft::NAT_SNAT, Family::Ip, r0, Some(r1), 0);
    rule.finish(None);
    // ct status dnat masquerade fully-random
    let mut rule = RuleBuilder::new(&mut batch, T, "postrouting", tag("add rule"));
    rule.ct_load(nft::CT_STATUS, r0)
        .bitwise(r0, r0, &nft::CT_STATUS_DNAT.to_ne_bytes(), &[0; 4])
        .cmp(nft::CMP_NEQ, r0, &[0; 4])
        .masquerade(nft::NAT_RANGE_PROTO_RANDOM_FULLY);
    rule.finish(None);

    // One comment longer than nft keeps: it is cut to 127 bytes on a character boundary.
    let long = format!("{}é", "x".repeat(126));
    let mut rule = RuleBuilder::new(&mut batch, T, "postrouting", tag("add rule"));
    rule.counter();
    rule.finish(Some(&long));

    assert_eq!(send(batch), [], "the kernel takes the batch");
    let listing = list_table(TABLE).expect("the table exists");

    let sets: Vec<&String> = listing.sets.keys().collect();
    assert_eq!(sets, ["backends", "marks", "nets", "recent"]);
    assert_eq!(
        strip(&listing.sets["nets"]),
        j(r#"{"type": "ipv4_addr", "flags": ["interval"], "elem": [
            {"prefix": {"addr": "10.0.0.0", "len": 24}},
            {"range": ["172.16.0.5", "172.16.0.9"]},
            {"prefix": {"addr": "192.168.0.0", "len": 16}}]}"#)
    );
    // Elements count down from their own timeout; the set keeps its default.
    let recent = strip(&listing.sets["recent"]);
    assert_eq!(recent.at("flags"), &j(r#"["timeout"]"#));
    assert_eq!(recent.at("timeout"), &Json::Num(30.0));
    let elem = recent.at("elem").items()[0].at("elem");
    assert_eq!(elem.at("val"), &Json::Str("192.0.2.1".into()));
    assert_eq!(elem.at("timeout"), &Json::Num(3600.0));
    let Json::Num(expires) = elem.at("expires") else {
        panic!("{elem}")
    };
    assert!((3000.0..=3600.0).contains(expires), "{elem}");
    assert_eq!(
        strip(&listing.sets["marks"]),
        j(
            r#"{"type": ["ipv4_addr", "inet_service"], "map": "mark", "elem": [
            [{"concat": ["10.1.0.1", 80]}, 16], [{"concat": ["10.1.0.2", 443]}, 32]]}"#
        )
    );
    assert_eq!(
        strip(&listing.sets["backends"]),
        j(
            r#"{"type": ["ipv4_addr", "inet_service"], "map": "ipv4_addr . inet_service",
              "elem": [[{"concat": ["10.96.0.10", 80]}, {"concat": ["10.244.0.10", 8080]}]]}"#
        )
    );
    // nft prints a dynamic set's kernel-chosen size and flags in text.
    let (_, text, _) = nft_cmd(&["list", "set", "ip", TABLE, "recent"]);
    assert!(text.contains("flags dynamic,timeout"), "{text}");

    let chains: BTreeMap<&str, Json> = listing
        .chains
        .iter()
        .map(|(name, body)| (name.as_str(), strip(body)))
        .collect();
    assert_eq!(
        chains,
        BTreeMap::from([
            (
                "input",
                j(r#"{"type": "filter", "hook": "input", "prio": 0, "policy": "accept"}"#)
            ),
            (
                "prerouting",
                j(r#"{"type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}"#)
            ),
            (
                "postrouting",
                j(r#"{"type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}"#)
            ),
        ])
    );

    let saddr = r#"{"payload": {"protocol": "ip", "field": "saddr"}}"#;
    let key = r#"{"concat": [{"payload": {"protocol": "ip", "field": "daddr"}},
                             {"payload": {"protocol": "tcp", "field": "dport"}}]}"#;
    let ct_dnat = r#"{"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}}"#;
    let expect = |chain: &str, rules: &[String]| {
        let want: Vec<Json> = rules.iter().map(|r| j(r)).collect();
        assert_eq!(listing.rules[chain], want, "chain {chain}");
    };
    expect(
        "input",
        &[
            format!(
                r#"[{{"match": {{"op": "==", "left": {saddr}, "right": "@nets"}}}},
                    {{"counter": {{"packets": 0, "bytes": 0}}}}, {{"accept": null}}]"#
            ),
            format!(
                r#"[{{"match": {{"op": "!=", "left": {saddr}, "right": "@nets"}}}},
                    {{"set": {{"op": "update", "set": "@recent",
                               "elem": {{"elem": {{"val": {saddr}, "timeout": 10}}}}}}}}]"#
            ),
            format!(r#"[{ct_dnat}, {{"counter": {{"packets": 0, "bytes": 0}}}}]"#),
            // nft folds "meta l4proto tcp" into the reject as its dependency.
            r#"[{"reject": {"type": "tcp reset"}}]"#.to_string(),
        ],
    );
    expect(
        "prerouting",
        &[
            format!(
                r#"[{{"mangle": {{"key": {{"meta": {{"key": "mark"}}}},
                                 "value": {{"map": {{"key": {key}, "data": "@marks"}}}}}}}}]"#
            ),
            format!(
                r#"[{{"dnat": {{"family": "ip",
                               "addr": {{"map": {{"key": {key}, "data": "@backends"}}}}}}}}]"#
            ),
        ],
    );
    expect(
        "postrouting",
        &[
            format!(
                r#"[{{"match": {{"op": "==", "left": {saddr},
                                "right": {{"prefix": {{"addr": "10.0.0.0", "len": 24}}}}}}}},
                    {{"match": {{"op": "==", "left": {{"meta": {{"key": "l4proto"}}}},
                                "right": "tcp"}}}},
                    {{"snat": {{"addr": "203.0.113.1", "port": 1024}}}}]"#
            ),
            format!(r#"[{ct_dnat}, {{"masquerade": {{"flags": "fully-random"}}}}]"#),
            r#"[{"counter": {"packets": 0, "bytes": 0}}]"#.to_string(),
        ],
    );
    assert_eq!(
        listing.comments["input"],
        [Some("known networks".to_string()), None, None, None]
    );
    let cut = listing.comments["postrouting"][2]
        .clone()
        .expect("a comment");
    assert_eq!(
        cut,
        "x".repeat(126),
        "é would straddle byte 127, so it goes"
    );
}

/// An object without the fields that only locate it (handle, family, table, name).
fn strip(body: &Json) -> Json {
    let Json::Obj(map) = body else {
        panic!("{body}")
    };
    Json::Obj(
        map.iter()
            .filter(|(k, _)| !matches!(k.as_str(), "handle" | "family" | "table" | "name"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    )
}

#[test]
#[ignore = "needs root and nft: make test runs it"]
fn ip6_encoders_round_trip_through_nft() {
    private_netns();
    let t6 = TableRef {
        family: Family::Ip6,
        name: TABLE,
    };
    let v6 = |text: &str| text.parse::<std::net::Ipv6Addr>().unwrap().octets();
    let mut batch = Batch::new(1);
    nft::add_table(&mut batch, t6, tag("add table"));
    let addr = [(nft::TYPE_IP6ADDR, 16)];
    let spec = SetSpec {
        name: "nets6",
        key: &addr,
        key_byteorder: nft::BYTEORDER_BIG,
        data: SetData::None,
        flags: nft::SET_INTERVAL,
        timeout_ms: None,
    };
    nft::add_set(&mut batch, t6, &spec, 1, tag("add set"));
    let (start, end) = (v6("fd00:244::"), v6("fd00:244:0:1::"));
    nft::set_elements(
        &mut batch,
        t6,
        "nets6",
        false,
        [(start, false), (end, true)]
            .iter()
            .map(|(key, interval_end)| {
                (
                    Element {
                        key,
                        data: ElementData::None,
                        interval_end: *interval_end,
                        timeout_ms: None,
                    },
                    tag("add element"),
                )
            }),
    );
    for (name, hooknum, priority) in [
        ("prerouting", nft::HOOK_PREROUTING, -100),
        ("postrouting", nft::HOOK_POSTROUTING, 100),
    ] {
        let hook = Hook {
            kind: "nat",
            hooknum,
            priority,
        };
        nft::add_chain(&mut batch, t6, name, Some(hook), tag("add chain"));
    }
    let r0 = nft::REG32_00;
    let r_port = nft::reg_after(r0, 16);
    // meta l4proto tcp ip6 daddr fd00:96::10 dnat to [fd00:244::10]:8080
    let mut rule = RuleBuilder::new(&mut batch, t6, "prerouting", tag("add rule"));
    rule.meta_load(nft::META_L4PROTO, r0)
        .cmp(nft::CMP_EQ, r0, &[6])
        .payload(nft::PAYLOAD_NETWORK, Family::Ip6.daddr_offset(), 16, r0)
        .cmp(nft::CMP_EQ, r0, &v6("fd00:96::10"))
        .immediate(r0, &v6("fd00:244::10"))
        .immediate(r_port, &8080u16.to_be_bytes())
        .nat(nft::NAT_DNAT, Family::Ip6, r0, Some(r_port), 0);
    rule.finish(None);
    // ip6 saddr @nets6 snat to fd00::1 ; masquerade
    let mut rule = RuleBuilder::new(&mut batch, t6, "postrouting", tag("add rule"));
    rule.payload(nft::PAYLOAD_NETWORK, Family::Ip6.saddr_offset(), 16, r0)
        .lookup("nets6", r0, None, 0)
        .immediate(r0, &v6("fd00::1"))
        .nat(nft::NAT_SNAT, Family::Ip6, r0, None, 0);
    rule.finish(None);
    let mut rule = RuleBuilder::new(&mut batch, t6, "postrouting", tag("add rule"));
    rule.masquerade(0);
    rule.finish(None);
    assert_eq!(send(batch), [], "the kernel takes the batch");

    let (ok, stdout, stderr) = nft_cmd(&["-j", "list", "table", "ip6", TABLE]);
    assert!(ok, "{stderr}");
    let items = Json::parse(&stdout);
    let mut sets = Vec::new();
    let mut rules = Vec::new();
    for item in items.at("nftables").items() {
        if let Some(set) = item.get("set") {
            sets.push(strip(set));
        }
        if let Some(rule) = item.get("rule") {
            rules.push(rule.at("expr").clone());
        }
    }
    assert_eq!(
        sets,
        [j(r#"{"type": "ipv6_addr", "flags": ["interval"],
              "elem": [{"prefix": {"addr": "fd00:244::", "len": 64}}]}"#)]
    );
    let expected = [
        r#"[{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "daddr"}},
                      "right": "fd00:96::10"}},
            {"dnat": {"addr": "fd00:244::10", "port": 8080}}]"#,
        r#"[{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}},
                      "right": "@nets6"}},
            {"snat": {"addr": "fd00::1"}}]"#,
        r#"[{"masquerade": null}]"#,
    ];
    let expected: Vec<Json> = expected.iter().map(|r| j(r)).collect();
    assert_eq!(rules, expected);
}

#[test]
#[ignore = "needs root and nft: make test runs it"]
fn large_element_lists_are_split_and_all_arrive() {
    private_netns();
    let mut batch = Batch::new(1);
    nft::add_table(&mut batch, T, tag("add table"));
    let pair = [(nft::TYPE_IPADDR, 4), (nft::TYPE_IPADDR, 4)];
    let spec = SetSpec {
        name: "pairs",
        key: &pair,
        key_byteorder: nft::BYTEORDER_BIG,
        data: SetData::None,
        flags: 0,
        timeout_ms: None,
    };
    nft::add_set(&mut batch, T, &spec, 1, tag("add set"));
    let count = 20_000u32;
    let keys: Vec<[u8; 8]> = (0..count)
        .map(|i| {
            let addr = (0x0a00_0000 + i).to_be_bytes();
            let mut key = [0; 8];
            key[..4].copy_from_slice(&addr);
            key[4..].copy_from_slice(&addr);
            key
        })
        .collect();
    let before = batch.message_count();
    nft::set_elements(
        &mut batch,
        T,
        "pairs",
        false,
        keys.iter().map(|key| element(key, ElementData::None)),
    );
    assert!(
        batch.message_count() - before > 1,
        "one message cannot hold them"
    );
    assert_eq!(send(batch), [], "the kernel takes the batch");
    let listing = list_table(TABLE).expect("the table exists");
    let elems = listing.sets["pairs"].at("elem").items();
    assert_eq!(elems.len(), count as usize);
    assert!(elems.contains(&j(r#"{"concat": ["10.0.78.31", "10.0.78.31"]}"#)));
}

#[test]
#[ignore = "needs root and nft: make test runs it"]
fn dumps_read_back_every_rule_of_one_table_only() {
    private_netns();
    let other = TableRef {
        family: Family::Ip,
        name: "waolb-kernel-test-other",
    };
    let mut batch = Batch::new(1);
    for table in [T, other] {
        nft::add_table(&mut batch, table, tag("add table"));
        nft::add_chain(&mut batch, table, "c", None, tag("add chain"));
    }
    // Enough rules that the answer spans many datagrams.
    let count = 3000u32;
    for i in 0..count {
        let mut rule = RuleBuilder::new(&mut batch, T, "c", tag("add rule"));
        rule.immediate(nft::REG32_00, &i.to_be_bytes())
            .immediate(nft::reg_after(nft::REG32_00, 4), &[0x1f, 0x90])
            .nat(
                nft::NAT_DNAT,
                Family::Ip,
                nft::REG32_00,
                Some(nft::reg_after(nft::REG32_00, 4)),
                0,
            );
        rule.finish(Some(&format!("rule {i}")));
    }
    let mut rule = RuleBuilder::new(&mut batch, other, "c", tag("add rule"));
    rule.counter();
    rule.finish(None);
    assert_eq!(send(batch), [], "the kernel takes the batch");

    let mut socket = Socket::open().expect("netlink socket");
    let ip = Family::Ip.nfproto();
    let tables: Vec<String> = socket
        .dump(nft::NFT_MSG_GETTABLE, ip, &[])
        .expect("table dump")
        .iter()
        .map(|payload| nft::parse_table_name(payload).expect("a name").to_string())
        .collect();
    assert_eq!(tables, [TABLE, other.name]);
    let answers = socket
        .dump(nft::NFT_MSG_GETRULE, ip, &[(nft::NFTA_RULE_TABLE, TABLE)])
        .expect("rule dump");
    assert_eq!(answers.len(), count as usize);
    for (i, payload) in answers.iter().enumerate() {
        let rule = nft::parse_rule(payload).expect("a rule");
        assert_eq!((rule.table, rule.chain), (TABLE, "c"));
        assert_eq!(rule.comment, Some(format!("rule {i}").as_str()));
        let names: Vec<&str> = rule.expressions.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, ["immediate", "immediate", "nat"]);
        let (reg, value) = nft::immediate_value(rule.expressions[0].1).expect("data");
        assert_eq!((reg, value), (nft::REG32_00, &(i as u32).to_be_bytes()[..]));
        let nat = nft::nat_registers(rule.expressions[2].1).expect("registers");
        assert_eq!(nat, (nft::NAT_DNAT, nft::REG32_00, Some(nft::REG32_00 + 1)));
    }
    // The ip6 family has no such table: the filter matches nothing, it is not an error.
    let missing = socket
        .dump(
            nft::NFT_MSG_GETRULE,
            Family::Ip6.nfproto(),
            &[(nft::NFTA_RULE_TABLE, TABLE)],
        )
        .expect("an empty dump");
    assert!(missing.is_empty());
    // The socket still works for batches afterwards.
    let mut batch = Batch::new(socket.next_seq());
    nft::delete_table(&mut batch, other, tag("delete table"));
    let (wire, tags, first_seq) = batch.finish();
    assert_eq!(socket.send_batch(&wire, &tags, first_seq).expect("I/O"), []);
}

/// A message the kernel refuses, added among good ones.
struct BadBatch {
    what: &'static str,
    errno: i32,
    add_bad: fn(&mut Batch, MessageTag),
}

#[test]
#[ignore = "needs root and nft: make test runs it"]
fn one_bad_message_fails_the_batch_names_it_and_commits_nothing() {
    private_netns();
    let cases = [
        BadBatch {
            what: "a rule in a chain that does not exist",
            errno: libc::ENOENT,
            add_bad: |batch, tag| {
                let mut rule = RuleBuilder::new(batch, T, "missing", tag);
                rule.counter();
                rule.finish(None);
            },
        },
        BadBatch {
            what: "a jump to a chain that does not exist",
            errno: libc::ENOENT,
            add_bad: |batch, tag| {
                let mut rule = RuleBuilder::new(batch, T, "c", tag);
                rule.verdict(Verdict::Jump("nowhere"));
                rule.finish(None);
            },
        },
        BadBatch {
            what: "a lookup in a set that does not exist",
            errno: libc::ENOENT,
            add_bad: |batch, tag| {
                let mut rule = RuleBuilder::new(batch, T, "c", tag);
                rule.payload(nft::PAYLOAD_NETWORK, 12, 4, nft::REG32_00)
                    .lookup("no-such-set", nft::REG32_00, None, 0);
                rule.finish(None);
            },
        },
        BadBatch {
            what: "an element whose key has the wrong length",
            errno: libc::EINVAL,
            add_bad: |batch, tag| {
                let key = [10, 0, 0];
                nft::set_elements(
                    batch,
                    T,
                    "s",
                    false,
                    [(
                        Element {
                            key: &key,
                            data: ElementData::None,
                            interval_end: false,
                            timeout_ms: None,
                        },
                        tag,
                    )],
                );
            },
        },
        BadBatch {
            what: "dnat in a filter chain",
            errno: libc::EOPNOTSUPP,
            add_bad: |batch, tag| {
                let mut rule = RuleBuilder::new(batch, T, "input", tag);
                rule.immediate(nft::REG32_00, &ip("10.0.0.1")).nat(
                    nft::NAT_DNAT,
                    Family::Ip,
                    nft::REG32_00,
                    None,
                    0,
                );
                rule.finish(None);
            },
        },
    ];
    let mut socket = Socket::open().expect("netlink socket");
    for case in cases {
        let generation = socket.generation().expect("generation");
        let mut batch = Batch::new(socket.next_seq());
        let good = |action| MessageTag {
            action,
            subject: NO_SUBJECT,
        };
        nft::add_table(&mut batch, T, good("add table"));
        nft::add_chain(&mut batch, T, "c", None, good("add chain"));
        let hook = Hook {
            kind: "filter",
            hooknum: nft::HOOK_INPUT,
            priority: 0,
        };
        nft::add_chain(&mut batch, T, "input", Some(hook), good("add base chain"));
        let addr = [(nft::TYPE_IPADDR, 4)];
        let spec = SetSpec {
            name: "s",
            key: &addr,
            key_byteorder: nft::BYTEORDER_BIG,
            data: SetData::None,
            flags: 0,
            timeout_ms: None,
        };
        nft::add_set(&mut batch, T, &spec, 1, good("add set"));
        let bad_tag = MessageTag {
            action: "the bad one",
            subject: 7,
        };
        (case.add_bad)(&mut batch, bad_tag);
        // Good messages after the bad one, so the error must be matched by sequence number.
        let mut rule = RuleBuilder::new(&mut batch, T, "c", good("add rule"));
        rule.counter();
        rule.finish(None);
        nft::add_chain(&mut batch, T, "d", None, good("add chain"));

        let (wire, tags, first_seq) = batch.finish();
        let errors = socket
            .send_batch(&wire, &tags, first_seq)
            .expect("netlink I/O");
        // The first error is the bad message's. The kernel goes on checking the rest of the
        // batch, and a table that failed validation fails later rules of it too.
        let Some(error) = errors.first() else {
            panic!("{}: accepted", case.what)
        };
        assert_eq!(error.errno, case.errno, "{}: {error:?}", case.what);
        assert_eq!(error.tag, Some(bad_tag), "{}: {error:?}", case.what);
        assert_eq!(
            socket.generation().unwrap(),
            generation,
            "{}: committed",
            case.what
        );
        assert!(
            list_table(TABLE).is_none(),
            "{}: the table exists",
            case.what
        );
        let (ok, ruleset, _) = nft_cmd(&["list", "ruleset"]);
        assert!(ok && ruleset.is_empty(), "{}: {ruleset}", case.what);
    }

    // Without a bad message the same kind of batch commits, as one new generation.
    let generation = socket.generation().unwrap();
    let mut batch = Batch::new(socket.next_seq());
    nft::add_table(&mut batch, T, tag("add table"));
    nft::add_chain(&mut batch, T, "c", None, tag("add chain"));
    let (wire, tags, first_seq) = batch.finish();
    let errors = socket
        .send_batch(&wire, &tags, first_seq)
        .expect("netlink I/O");
    assert_eq!(errors, [], "the kernel takes the batch");
    assert_eq!(socket.generation().unwrap(), generation.wrapping_add(1));
    assert!(list_table(TABLE)
        .expect("the table exists")
        .chains
        .contains_key("c"));
}

/// When every message of a large batch fails, the kernel queues one error report per
/// message; past the receive buffer it drops the rest, and the answer to the GETGEN that
/// `send_batch` waits for is dropped with them. It must still answer (a helper thread
/// fails the test rather than hang).
#[test]
#[ignore = "needs root and nft: make test runs it"]
fn a_flood_of_errors_is_reported_not_waited_for_forever() {
    let (done, outcome) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        private_netns();
        let mut socket = Socket::open().expect("netlink socket");
        let mut batch = Batch::new(socket.next_seq());
        for _ in 0..50_000 {
            let mut rule = RuleBuilder::new(&mut batch, T, "c", tag("add rule"));
            rule.counter();
            rule.finish(None);
        }
        let (wire, tags, first_seq) = batch.finish();
        let result = socket.send_batch(&wire, &tags, first_seq);
        let _ = done.send(result.map(|errors| {
            let first = errors.first().map(|e| (e.errno, e.tag));
            (errors.len(), first)
        }));
    });
    // Only a safety net against a hang: the answer takes well under a second on an idle
    // machine, so a generous limit stays clear of a slow or busy one.
    match outcome.recv_timeout(std::time::Duration::from_secs(120)) {
        Ok(result) => {
            let (count, first) = result.expect("netlink I/O");
            // Every report that fitted, and a last one saying the rest were dropped.
            assert!(count > 1, "{count} errors");
            assert_eq!(first, Some((libc::ENOENT, Some(tag("add rule")))));
        }
        // The helper thread stays blocked in recv(); the test process ends anyway. A helper
        // that panicked (a missing prerequisite) drops the sender: that is an error too.
        Err(error) => panic!("send_batch did not answer: {error}"),
    }
}
