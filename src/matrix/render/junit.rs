//! The JUnit XML report, for CI systems: a test suite per file, a test
//! case per test.

use std::path::Path;

use super::*;
use crate::matrix::coverage::*;
use crate::matrix::run::*;

/// Text safe in XML 1.0 (which has no escape for most control characters).
fn xml_text(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() && !matches!(c, '\t' | '\n' | '\r') {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect()
}

/// `tests/matrices/r03.yaml` -> `tests.matrices.r03`: a JUnit class name.
fn class_name(file: &Path) -> String {
    file.with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().replace('.', "_"))
        .filter(|c| !c.is_empty() && c != "_")
        .collect::<Vec<_>>()
        .join(".")
}

/// The report as JUnit XML: one `testsuite` per file, one `testcase` per
/// cell or case, a `failure` for each failed one. Coverage, when asked for,
/// is the `system-out` of a last, test-less `testsuite` named `coverage`.
pub fn render_junit(report: &Report, cov: Option<&Coverage>) -> String {
    use quick_xml::Writer;
    use quick_xml::events::{BytesDecl, BytesText, Event};

    let mut writer = Writer::new_with_indent(Vec::new(), b' ', 2);
    let result: std::io::Result<()> = (|| {
        writer.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
        let tests = (report.passed() + report.failed()).to_string();
        let failures = report.failed().to_string();
        writer
            .create_element("testsuites")
            .with_attribute(("name", "orgwarden test"))
            .with_attribute(("tests", tests.as_str()))
            .with_attribute(("failures", failures.as_str()))
            .with_attribute(("errors", "0"))
            .write_inner_content(|w| {
                for f in &report.files {
                    let tests = f.results.len().to_string();
                    let failures = f.failed().to_string();
                    let file = xml_text(&f.file.display().to_string());
                    let class = xml_text(&class_name(&f.file));
                    w.create_element("testsuite")
                        .with_attribute(("name", xml_text(&f.name).as_str()))
                        .with_attribute(("file", file.as_str()))
                        .with_attribute(("tests", tests.as_str()))
                        .with_attribute(("failures", failures.as_str()))
                        .with_attribute(("errors", "0"))
                        .with_attribute(("skipped", "0"))
                        .write_inner_content(|w| {
                            for r in &f.results {
                                let line = r.spec.pos.line.to_string();
                                let el = w
                                    .create_element("testcase")
                                    .with_attribute(("name", xml_text(&r.spec.name).as_str()))
                                    .with_attribute(("classname", class.as_str()))
                                    .with_attribute(("file", file.as_str()))
                                    .with_attribute(("line", line.as_str()));
                                if r.pass {
                                    el.write_empty()?;
                                } else {
                                    el.write_inner_content(|w| {
                                        w.create_element("failure")
                                            .with_attribute((
                                                "message",
                                                xml_text(&failure_message(r)).as_str(),
                                            ))
                                            .with_attribute(("type", "decision"))
                                            .write_text_content(BytesText::new(&xml_text(
                                                &failure_details(f, r).join("\n"),
                                            )))?;
                                        Ok(())
                                    })?;
                                }
                            }
                            Ok(())
                        })?;
                }
                if let Some(cov) = cov {
                    let mut text = String::new();
                    render_coverage_text(&mut text, cov);
                    w.create_element("testsuite")
                        .with_attribute(("name", "coverage"))
                        .with_attribute(("tests", "0"))
                        .with_attribute(("failures", "0"))
                        .with_attribute(("errors", "0"))
                        .with_attribute(("skipped", "0"))
                        .write_inner_content(|w| {
                            w.create_element("system-out")
                                .write_text_content(BytesText::new(&xml_text(&text)))?;
                            Ok(())
                        })?;
                }
                Ok(())
            })?;
        Ok(())
    })();
    // Writing to a Vec cannot fail.
    debug_assert!(result.is_ok());
    let mut xml = String::from_utf8(writer.into_inner()).unwrap_or_default();
    xml.push('\n');
    xml
}
