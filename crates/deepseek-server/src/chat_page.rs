//! The chat page at `/`: one static HTML file embedded in the binary (no build step, no external
//! assets, works offline) that talks to this server's own `/v1/chat/completions` stream.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use base64::Engine;
use sha2::{Digest, Sha256};

pub const PAGE: &str = include_str!("chat_page.html");

/// The page's one inline script, hashed for the Content-Security-Policy: only that script runs,
/// and the page may connect to this server alone, so a reply that smuggled markup into the page
/// (it is inserted as text, never as HTML) could still run nothing and send nothing elsewhere.
fn content_security_policy() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        let script = PAGE
            .split_once("<script>")
            .and_then(|(_, rest)| rest.split_once("</script>"))
            .map(|(s, _)| s)
            .unwrap_or_default();
        let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(script));
        format!(
            "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'"
        )
    })
}

pub async fn handle() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, content_security_policy()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_self_contained_and_its_script_is_hashed() {
        assert_eq!(PAGE.matches("<script>").count(), 1, "one inline script");
        for external in ["src=\"http", "href=\"http", "@import", "url(http", "//cdn"] {
            assert!(!PAGE.contains(external), "external asset: {external}");
        }
        // Model output must never become markup.
        assert!(!PAGE.contains("innerHTML"), "innerHTML in the page");
        let csp = content_security_policy();
        assert!(csp.contains("script-src 'sha256-") && !csp.contains("unsafe-inline';  script"));
        assert!(!csp.contains("script-src 'unsafe-inline'"));
    }
}
