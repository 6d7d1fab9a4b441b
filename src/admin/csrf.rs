//! CSRF defence for the admin forms: every form carries the session's token (or, on the login form,
//! the token of a short-lived pre-login cookie), compared in constant time. SameSite=Strict cookies
//! are the second layer.

use subtle::ConstantTimeEq;

/// Name of the cookie that carries the login form's token before there is a session.
pub const LOGIN_COOKIE: &str = "facegate_login";

/// Does the form's token match the expected one?
pub fn matches(expected: &str, submitted: Option<&str>) -> bool {
    submitted.is_some_and(|given| {
        !expected.is_empty() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_matches() {
        assert!(matches("abc123", Some("abc123")));
        assert!(!matches("abc123", Some("abc124")));
        assert!(!matches("abc123", Some("abc12")));
        assert!(!matches("abc123", None));
        assert!(!matches("", Some("")), "an empty token never matches");
    }
}
