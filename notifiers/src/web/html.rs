//! HTML escaping, the page shell and the request summary shared by every page.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use countersign_bot::RequestView;
use time::format_description::well_known::Rfc3339;

/// Escape text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Shown, not applied: a browser would apply a bidi override written as a character
            // reference just the same (see `countersign_bot::reveal`).
            c if countersign_bot::reveal::is_deceptive(c) => {
                out.push_str(&format!("⟦U+{:04X}⟧", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// A complete page: `body` must already be escaped HTML.
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"referrer\" content=\"no-referrer\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title} · Countersign</title>\
<style>body{{font-family:system-ui,sans-serif;max-width:48rem;margin:2rem auto;padding:0 1rem;color:#222}}\
pre{{background:#f4f4f4;padding:.75rem;overflow-x:auto;white-space:pre-wrap;word-break:break-all}}\
th{{text-align:left;padding-right:1rem;vertical-align:top}}button{{font-size:1.1rem;padding:.5rem 1.5rem}}\
.who{{background:#fff6d5;padding:.5rem;border-left:4px solid #e0b000}}</style></head>\
<body><h1>{title}</h1>\n{body}\n</body></html>\n",
        title = escape(title),
    )
}

/// An HTML response that is never cached, framed or leaks its URL (which holds a token) as a referrer.
pub fn html_response(status: StatusCode, html: String) -> Response {
    let mut r = (status, html).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    r
}

/// A short error page with what to do next.
pub fn error_page(status: StatusCode, title: &str, message: &str) -> Response {
    html_response(status, page(title, &format!("<p>{}</p>", escape(message))))
}

/// RFC 3339 time, or the raw Unix seconds if formatting fails.
pub fn format_time(t: time::OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// The request's facts and full statement, escaped.
pub fn request_summary(view: &RequestView) -> String {
    let r = &view.request;
    let reasons = r
        .reasons
        .iter()
        .map(|x| format!("<li>{}</li>", escape(x)))
        .collect::<String>();
    format!(
        "<table>\
<tr><th>Request</th><td><code>{id}</code></td></tr>\
<tr><th>Status</th><td><strong>{status}</strong></td></tr>\
<tr><th>Connection</th><td>{conn}</td></tr>\
<tr><th>Requested by</th><td>{req}</td></tr>\
<tr><th>Rule</th><td>{rule}</td></tr>\
<tr><th>Approvals</th><td>{n} of {quorum} needed</td></tr>\
<tr><th>Expires</th><td>{exp}</td></tr>\
</table>\
<h2>Why review is needed</h2><ul>{reasons}</ul>\
<h2>Statement</h2>{warning}<pre>{sql}</pre>",
        warning = countersign_bot::reveal::hidden_characters_warning(&r.statement)
            .map(|w| format!("<p class=\"who\">{}</p>", escape(&w)))
            .unwrap_or_default(),
        id = escape(&r.id.to_string()),
        status = escape(r.status.as_str()),
        conn = escape(&r.connection),
        req = escape(&r.requester.display()),
        rule = escape(&r.rule),
        n = view.approvals(),
        quorum = r.quorum,
        exp = escape(&format_time(r.expires_at)),
        sql = escape(&r.statement),
    )
}

/// The votes in order, and the execution result once there is one.
pub fn vote_timeline(view: &RequestView) -> String {
    let mut out = String::from("<h2>Votes</h2>");
    if view.votes.is_empty() {
        out.push_str("<p>No votes yet.</p>");
    } else {
        out.push_str("<ol>");
        for v in &view.votes {
            out.push_str(&format!(
                "<li>{at}: <strong>{who}</strong> {dec} via {ch}{reason}</li>",
                at = escape(&format_time(v.at)),
                who = escape(&v.voter_name),
                dec = if v.decision == countersign_bot::Decision::Approve {
                    "approved"
                } else {
                    "denied"
                },
                ch = escape(&v.channel),
                reason = v
                    .reason
                    .as_deref()
                    .map(|r| format!(": “{}”", escape(r)))
                    .unwrap_or_default(),
            ));
        }
        out.push_str("</ol>");
    }
    if let Some(e) = &view.request.execution {
        out.push_str(&format!(
            "<h2>Execution</h2><p>{}{}{} in {} ms</p>",
            e.command_tag.as_deref().map(escape).unwrap_or_default(),
            e.rows.map(|n| format!(" ({n} rows)")).unwrap_or_default(),
            e.error
                .as_deref()
                .map(|x| format!(" failed: {}", escape(x)))
                .unwrap_or_default(),
            e.duration_ms
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_neutralises_markup_and_bidi_overrides() {
        let e = escape("<script>alert('x')</script> & \"q\" \u{202E}");
        assert_eq!(
            e,
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot; ⟦U+202E⟧"
        );
    }

    #[test]
    fn pages_are_not_cached_and_send_no_referrer() {
        let r = error_page(StatusCode::GONE, "Gone", "<b>x</b>");
        assert_eq!(r.status(), StatusCode::GONE);
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(r.headers()[header::REFERRER_POLICY], "no-referrer");
    }
}
