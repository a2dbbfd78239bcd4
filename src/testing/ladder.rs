//! `serlua test --verbose`: a test's message flow as a text ladder
//! diagram (the sequence diagrams of RFC 3665's call flows): one column
//! per party, the proxy's addresses merged into one, an arrow per message
//! with its first line, and the routes that handled it.

use std::net::SocketAddr;

use super::proxy::Event;

/// Width of one party's column.
const COL: usize = 34;

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Draws `events` of the proxy running `script` at `proxy_addrs`.
pub fn draw(script: &str, proxy_addrs: &[SocketAddr], events: &[Event]) -> String {
    // Columns: the proxy first, then the other parties as they appear.
    let mut parties: Vec<Option<SocketAddr>> = vec![None];
    let col = |parties: &mut Vec<Option<SocketAddr>>, a: SocketAddr| -> usize {
        if proxy_addrs.contains(&a) {
            return 0;
        }
        match parties.iter().position(|p| *p == Some(a)) {
            Some(i) => i,
            None => {
                parties.push(Some(a));
                parties.len() - 1
            }
        }
    };
    let mut rows: Vec<(f64, usize, usize, String, String, String)> = Vec::new();
    for e in events {
        match (e.src, e.dst) {
            (Some(s), Some(d)) => {
                let (a, b) = (col(&mut parties, s), col(&mut parties, d));
                let proto = if e.proto == crate::transport::Proto::Tcp { " (tcp)" } else { "" };
                // The version says nothing in a ladder: `180 Ringing`, `INVITE sip:…`.
                let label = e.label.strip_prefix("SIP/2.0 ").unwrap_or(&e.label);
                let label = label.strip_suffix(" SIP/2.0").unwrap_or(label);
                rows.push((e.time, a, b, format!("{label}{proto}"), e.note.clone(), String::new()));
            }
            _ => rows.push((e.time, 0, 0, String::new(), e.note.clone(), e.label.clone())),
        }
    }
    // The proxy sits in the middle when it has parties on both sides:
    // the first other party to its left, the rest to its right.
    let order: Vec<usize> = if parties.len() > 2 {
        let mut o = vec![1, 0];
        o.extend(2..parties.len());
        o
    } else {
        (0..parties.len()).collect()
    };
    let x_of = |c: usize| order.iter().position(|o| *o == c).unwrap_or(0) * COL + COL / 2;
    let width = parties.len() * COL;
    let mut out = format!("  message flow of {script}:\n");
    let mut head = String::from("          ");
    for &c in &order {
        let name = match parties[c] {
            None => format!("[proxy {}]", proxy_addrs.first().map(|a| a.to_string()).unwrap_or_default()),
            Some(a) => a.to_string(),
        };
        head.push_str(&format!("{:^COL$}", clip(&name, COL - 2)));
    }
    out.push_str(head.trim_end());
    out.push('\n');
    for (t, a, b, label, note, timer) in rows {
        let mut line: Vec<char> = vec![' '; width];
        for &c in &order {
            line[x_of(c)] = '|';
        }
        if !timer.is_empty() {
            let x = x_of(0);
            let text: Vec<char> = format!("* {timer}").chars().collect();
            for (i, ch) in text.iter().enumerate() {
                if x + i < width {
                    line[x + i] = *ch;
                }
            }
        } else if a != b {
            let (xa, xb) = (x_of(a), x_of(b));
            let (lo, hi) = (xa.min(xb), xa.max(xb));
            for ch in line.iter_mut().take(hi).skip(lo + 1) {
                *ch = '-';
            }
            if xb > xa {
                line[hi - 1] = '>';
            } else {
                line[lo + 1] = '<';
            }
            let span = hi - lo - 3;
            let text: Vec<char> = clip(&label, span).chars().collect();
            let start = lo + 2 + (span - text.len()) / 2;
            for (i, ch) in text.iter().enumerate() {
                line[start + i] = *ch;
            }
        }
        let mut s = format!("  {t:>7.3} {}", line.iter().collect::<String>().trim_end());
        if !note.is_empty() {
            s.push_str("   [");
            s.push_str(&note);
            s.push(']');
        }
        out.push_str(&s);
        out.push('\n');
    }
    out
}
