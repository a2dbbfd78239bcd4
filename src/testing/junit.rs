//! `serlua test --junit FILE`: the results as JUnit XML, the format CI
//! systems read (Jenkins, GitLab, GitHub actions): one `<testsuite>` per
//! test file, one `<testcase>` per test, `<failure>` with the report,
//! `<skipped/>` for pending tests, `<system-out>` with what the test
//! printed and its message flow.

use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};

use super::{Outcome, Summary};

/// The report for a run, as XML text.
pub fn report(summary: &Summary) -> Result<Vec<u8>, String> {
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    let io = |e: std::io::Error| e.to_string();
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None))).map_err(io)?;
    let total_time: f64 = summary.results.iter().map(|r| r.seconds).sum();
    let root = BytesStart::new("testsuites").with_attributes([
        ("name", "serlua test"),
        ("tests", summary.results.len().to_string().as_str()),
        ("failures", summary.failed().to_string().as_str()),
        ("errors", "0"),
        ("skipped", summary.skipped().to_string().as_str()),
        ("time", format!("{total_time:.3}").as_str()),
    ]);
    w.write_event(Event::Start(root)).map_err(io)?;
    let mut files: Vec<&str> = Vec::new();
    for r in &summary.results {
        if !files.contains(&r.file.as_str()) {
            files.push(&r.file);
        }
    }
    for file in files {
        let results: Vec<_> = summary.results.iter().filter(|r| r.file == file).collect();
        let failures = results.iter().filter(|r| matches!(r.outcome, Outcome::Failed(_))).count();
        let skipped = results.iter().filter(|r| r.outcome == Outcome::Skipped).count();
        let time: f64 = results.iter().map(|r| r.seconds).sum();
        let suite = BytesStart::new("testsuite").with_attributes([
            ("name", file),
            ("tests", results.len().to_string().as_str()),
            ("failures", failures.to_string().as_str()),
            ("errors", "0"),
            ("skipped", skipped.to_string().as_str()),
            ("time", format!("{time:.3}").as_str()),
        ]);
        w.write_event(Event::Start(suite)).map_err(io)?;
        for r in results {
            let case = BytesStart::new("testcase").with_attributes([
                ("classname", file),
                ("name", r.name.as_str()),
                ("time", format!("{:.3}", r.seconds).as_str()),
            ]);
            w.write_event(Event::Start(case)).map_err(io)?;
            match &r.outcome {
                Outcome::Passed => {}
                Outcome::Skipped => {
                    w.write_event(Event::Empty(BytesStart::new("skipped"))).map_err(io)?;
                }
                Outcome::Failed(why) => {
                    let first = why.lines().next().unwrap_or("failed");
                    let f = BytesStart::new("failure").with_attributes([("message", first), ("type", "assertion")]);
                    w.write_event(Event::Start(f)).map_err(io)?;
                    w.write_event(Event::Text(BytesText::new(why))).map_err(io)?;
                    w.write_event(Event::End(BytesEnd::new("failure"))).map_err(io)?;
                }
            }
            if !r.output.is_empty() {
                w.write_event(Event::Start(BytesStart::new("system-out"))).map_err(io)?;
                w.write_event(Event::Text(BytesText::new(&r.output))).map_err(io)?;
                w.write_event(Event::End(BytesEnd::new("system-out"))).map_err(io)?;
            }
            w.write_event(Event::End(BytesEnd::new("testcase"))).map_err(io)?;
        }
        w.write_event(Event::End(BytesEnd::new("testsuite"))).map_err(io)?;
    }
    w.write_event(Event::End(BytesEnd::new("testsuites"))).map_err(io)?;
    let mut out = w.into_inner();
    out.push(b'\n');
    Ok(out)
}
