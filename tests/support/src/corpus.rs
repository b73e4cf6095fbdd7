//! The hostile-input corpus: messages built to break a consumer's parser
//! or its bookkeeping, each with what must happen to it. Both adapters'
//! tests publish every case with their broker's own client and check the
//! outcome; [`table`] renders the corpus for the README.

/// The header every case carries its name in, to find it again wherever
/// it ends up (handled, or in the dead-letter queue).
pub const CASE_HEADER: &str = "x-corpus-case";

/// The `SLUICEGATE_MAX_MESSAGE_BYTES` the corpus runs under.
pub const MAX_BYTES: usize = 64 * 1024;

/// The headers sluicegate adds to a whole dead-lettered copy, in name
/// order: every other header is the original's.
pub const DEAD_LETTER_HEADERS: [&str; 4] = [
    sluicegate::header::ATTEMPT,
    sluicegate::header::DEAD_AT,
    sluicegate::header::ORIGIN,
    sluicegate::header::REASON,
];

/// What must happen to a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The handler runs once and the message is acked; how it is read.
    Handled(&'static str),
    /// Dead-lettered without a retry, with a reason that contains this.
    DeadLettered(&'static str),
}

/// One hostile message.
#[derive(Clone, Debug)]
pub struct Case {
    /// Its name, also the value of [`CASE_HEADER`].
    pub name: &'static str,
    /// The body.
    pub body: Vec<u8>,
    /// Headers besides [`CASE_HEADER`], values as raw bytes.
    pub headers: Vec<(&'static str, Vec<u8>)>,
    /// The broker's priority property, where it has one (AMQP).
    pub priority: Option<u8>,
    /// What must happen.
    pub expect: Expect,
}

/// The body the handler takes: `{"id": <u64>, "note": <optional text>,
/// "data": <optional JSON>}`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// Any number.
    pub id: u64,
    /// Optional text.
    #[serde(default)]
    pub note: Option<String>,
    /// Optional JSON of any shape.
    #[serde(default)]
    pub data: Option<serde_json::Value>,
}

fn good() -> Vec<u8> {
    br#"{"id":1}"#.to_vec()
}

fn case(name: &'static str, body: Vec<u8>, expect: Expect) -> Case {
    Case {
        name,
        body,
        headers: Vec::new(),
        priority: None,
        expect,
    }
}

fn with_header(name: &'static str, header: &'static str, value: &[u8], how: &'static str) -> Case {
    Case {
        headers: vec![(header, value.to_vec())],
        ..case(name, good(), Expect::Handled(how))
    }
}

/// Every case, in the order they are published.
pub fn corpus() -> Vec<Case> {
    let mut cases = body_cases();
    cases.extend(header_cases());
    cases.push(Case {
        priority: Some(255),
        ..case(
            "AMQP priority 255 (past any queue's maximum)",
            good(),
            Expect::Handled("first: a lane of its own, the highest"),
        )
    });
    cases
}

/// Bodies no handler can read, and one it can.
fn body_cases() -> Vec<Case> {
    use Expect::{DeadLettered, Handled};
    const NOT_JSON: &str = "payload is not valid JSON";
    let nested = format!(
        r#"{{"id":1,"data":{}{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let mut oversized = br#"{"id":1,"note":""#.to_vec();
    oversized.resize(MAX_BYTES + 1_000, b'x');
    oversized.extend_from_slice(br#""}"#);
    vec![
        case("a well-formed job", good(), Handled("as it is")),
        case(
            "malformed JSON",
            br#"{"id": 1,"#.to_vec(),
            DeadLettered(NOT_JSON),
        ),
        case(
            "JSON of the wrong shape",
            br#"{"note":"x"}"#.to_vec(),
            DeadLettered("missing field `id`"),
        ),
        case(
            "an unknown field",
            br#"{"id":1,"admin":true}"#.to_vec(),
            DeadLettered("unknown field `admin`"),
        ),
        case(
            "a field of the wrong type",
            br#"{"id":"seven"}"#.to_vec(),
            DeadLettered("invalid type"),
        ),
        case(
            "a number past u64",
            br#"{"id":18446744073709551616}"#.to_vec(),
            DeadLettered(NOT_JSON),
        ),
        case(
            "JSON nested 10,000 deep",
            nested.into_bytes(),
            DeadLettered("recursion limit"),
        ),
        case(
            "an empty body",
            Vec::new(),
            DeadLettered("EOF while parsing"),
        ),
        case(
            "non-UTF-8 bytes",
            vec![0xff, 0xfe, 0x00, 0x80],
            DeadLettered(NOT_JSON),
        ),
        case(
            "a body over SLUICEGATE_MAX_MESSAGE_BYTES",
            oversized,
            DeadLettered("too large"),
        ),
    ]
}

/// Good bodies with hostile headers: each is handled.
fn header_cases() -> Vec<Case> {
    vec![
        with_header(
            "a non-UTF-8 header",
            "x-note",
            &[0xff, 0xfe, 0x80],
            "as it is; the header is kept as bytes",
        ),
        with_header(
            "attempt header -1",
            sluicegate::header::ATTEMPT,
            b"-1",
            "as attempt 1; logged once, counted in `bad_attempts`",
        ),
        with_header(
            "attempt header abc",
            sluicegate::header::ATTEMPT,
            b"abc",
            "as attempt 1; logged once, counted in `bad_attempts`",
        ),
        with_header(
            "attempt header past u64",
            sluicegate::header::ATTEMPT,
            b"99999999999999999999999",
            "as the last attempt (the retry limit); logged once, counted",
        ),
        with_header(
            "attempt header 1000000",
            sluicegate::header::ATTEMPT,
            b"1000000",
            "as the last attempt (the retry limit); logged once, counted",
        ),
        with_header(
            "attempt header of non-UTF-8 bytes",
            sluicegate::header::ATTEMPT,
            &[0xff, 0x31],
            "as attempt 1; logged once, counted",
        ),
        with_header(
            "not-before in the year 318857",
            sluicegate::header::NOT_BEFORE,
            b"9999999999999999",
            "now: only records of a Kafka retry topic wait, an hour at most; RabbitMQ ignores it",
        ),
        with_header(
            "not-before in 1970",
            sluicegate::header::NOT_BEFORE,
            b"1",
            "now",
        ),
        with_header(
            "not-before that is not a number",
            sluicegate::header::NOT_BEFORE,
            b"tomorrow",
            "now (the header is ignored)",
        ),
        with_header(
            "a garbage traceparent",
            "traceparent",
            b"00-zz-not-a-trace-!!",
            "in a trace of its own (the header is ignored)",
        ),
        with_header(
            "a header of 16 KiB",
            "x-big",
            &[b'h'; 16 * 1024],
            "as it is",
        ),
    ]
}

/// The corpus as a Markdown table: input, what happens, the reason given.
pub fn table() -> String {
    let mut out = String::from("| input | what happens | reason given |\n|---|---|---|\n");
    for case in corpus() {
        let (what, reason) = match case.expect {
            Expect::Handled(how) => (format!("handled once, {how}"), "—".to_owned()),
            Expect::DeadLettered(reason) => (
                "dead-lettered at once, never retried".to_owned(),
                format!("`` …{reason}… ``"),
            ),
        };
        out.push_str(&format!("| {} | {what} | {reason} |\n", case.name));
    }
    out
}

/// What a corpus run saw: for each case name, the handler runs and the
/// dead-letter reasons.
#[derive(Debug, Default)]
pub struct Outcomes {
    /// Handler runs per case.
    pub handled: std::collections::BTreeMap<String, u32>,
    /// Dead-letter reasons per case.
    pub dead_lettered: std::collections::BTreeMap<String, Vec<String>>,
}

impl Outcomes {
    /// Checks every case against what it must give, and that the
    /// accounting adds up: each case handled or dead-lettered exactly once,
    /// `left` still in the queue.
    ///
    /// # Panics
    ///
    /// On the first case that went otherwise: a failed test.
    pub fn check(&self, left: usize) {
        self.check_cases(&corpus(), left);
    }

    /// [`Outcomes::check`] for `cases`, a part of the corpus.
    ///
    /// # Panics
    ///
    /// On the first case that went otherwise: a failed test.
    pub fn check_cases(&self, cases: &[Case], left: usize) {
        let mut wrong = Vec::new();
        for case in cases {
            let runs = self.handled.get(case.name).copied().unwrap_or(0);
            let reasons = self
                .dead_lettered
                .get(case.name)
                .cloned()
                .unwrap_or_default();
            let right = match case.expect {
                Expect::Handled(_) => runs == 1 && reasons.is_empty(),
                Expect::DeadLettered(want) => {
                    runs == 0 && reasons.len() == 1 && reasons[0].contains(want)
                }
            };
            if !right {
                wrong.push(format!(
                    "{}: handled {runs} times, dead-lettered {reasons:?}; want {:?}",
                    case.name, case.expect
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "cases that went otherwise:\n{}",
            wrong.join("\n")
        );
        let handled: u32 = self.handled.values().sum();
        let dead: usize = self.dead_lettered.values().map(Vec::len).sum();
        assert_eq!(left, 0, "nothing is left in the queue");
        assert_eq!(
            handled as usize + dead + left,
            cases.len(),
            "handled + dead-lettered + left = sent"
        );
    }
}

/// The corpus's handler: takes a [`Job`], records the run under the
/// case's name, succeeds.
pub fn handler(
    outcomes: std::sync::Arc<std::sync::Mutex<Outcomes>>,
) -> impl Fn(sluicegate::Json<Job>, sluicegate::Context) -> std::future::Ready<()> + Clone {
    move |_job, ctx| {
        let name = ctx
            .headers()
            .get_str(CASE_HEADER)
            .unwrap_or("(no case header)");
        let mut outcomes = outcomes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *outcomes.handled.entry(name.to_owned()).or_default() += 1;
        std::future::ready(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_readme_shows_the_corpus_as_it_is() {
        let readme = include_str!("../../../README.md");
        assert!(
            readme.contains(&super::table()),
            "README.md's hostile-input table differs from the corpus; it should read:\n{}",
            super::table()
        );
    }
}
