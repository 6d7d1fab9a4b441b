//! The door terminal's page at `/kiosk/`: plain HTML, CSS and JavaScript compiled into the binary and
//! served as they are, with no credential (they hold no secret) and a strict Content-Security-Policy.
//! Everything the page does at the door (camera, frames, keypad, pairing) happens in `page/kiosk.js`
//! against the same endpoints the tablet app uses; this module only knows the files.

/// One file of the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asset {
    pub content_type: &'static str,
    pub body: &'static [u8],
}

/// The page may load only from the door itself: no inline script or style, no other origin, no
/// framing. The camera stream is attached as an object, which no CSP directive governs; the frames
/// the page sends are canvas blobs, never loaded as images.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'; object-src 'none'";

/// The language tables, one file each: `<code>.json` with every string the page shows. A new
/// language is one more file here.
const LANGUAGES: [(&str, &[u8]); 2] = [
    ("en", include_bytes!("page/lang/en.json")),
    ("ko", include_bytes!("page/lang/ko.json")),
];

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const JSON: &str = "application/json; charset=utf-8";

/// The file at `name`, the path below `/kiosk/` without its query (`""` is the page itself).
pub fn asset(name: &str) -> Option<Asset> {
    let (content_type, body): (&str, &[u8]) = match name {
        "" | "index.html" => (HTML, include_bytes!("page/index.html")),
        "kiosk.css" => (CSS, include_bytes!("page/kiosk.css")),
        "kiosk.js" => (JS, include_bytes!("page/kiosk.js")),
        _ => {
            let code = name.strip_prefix("lang/")?.strip_suffix(".json")?;
            let (_, body) = LANGUAGES.iter().find(|(known, _)| *known == code)?;
            (JSON, *body)
        }
    };
    Some(Asset { content_type, body })
}

/// The headers every file of the page is served with.
pub fn headers(asset: &Asset) -> [(&'static str, &'static str); 6] {
    [
        ("Content-Type", asset.content_type),
        ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
        // The page changes with the binary: a tablet asks again on each load (a small page, on the LAN).
        ("Cache-Control", "no-cache"),
        ("Permissions-Policy", "camera=(self), microphone=()"),
    ]
}

/// The language codes the page has a table for.
pub fn languages() -> impl Iterator<Item = &'static str> {
    LANGUAGES.iter().map(|(code, _)| *code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_its_files_and_nothing_else_are_served() {
        let cases = [
            ("", Some(HTML)),
            ("index.html", Some(HTML)),
            ("kiosk.css", Some(CSS)),
            ("kiosk.js", Some(JS)),
            ("lang/en.json", Some(JSON)),
            ("lang/ko.json", Some(JSON)),
            ("lang/xx.json", None),
            ("lang/../mod.rs", None),
            ("mod.rs", None),
            ("page/kiosk.js", None),
        ];
        for (name, expected) in cases {
            assert_eq!(asset(name).map(|a| a.content_type), expected, "{name:?}");
        }
    }

    #[test]
    fn the_whole_page_stays_under_150_kb() {
        let total: usize = ["", "kiosk.css", "kiosk.js"]
            .into_iter()
            .map(|name| asset(name).unwrap().body.len())
            .chain(LANGUAGES.iter().map(|(_, body)| body.len()))
            .sum();
        assert!(total < 150 * 1024, "the kiosk page weighs {total} bytes");
    }

    #[test]
    fn every_language_has_every_string_of_english() {
        let table = |code: &str| -> serde_json::Map<String, serde_json::Value> {
            let asset = asset(&format!("lang/{code}.json")).unwrap();
            serde_json::from_slice(asset.body).unwrap_or_else(|err| panic!("{code}.json: {err}"))
        };
        let english = table("en");
        for code in languages() {
            let other = table(code);
            let missing: Vec<&String> =
                english.keys().filter(|k| !other.contains_key(*k)).collect();
            let extra: Vec<&String> = other.keys().filter(|k| !english.contains_key(*k)).collect();
            assert!(
                missing.is_empty() && extra.is_empty(),
                "{code}.json: missing {missing:?}, unknown {extra:?}"
            );
        }
    }

    #[test]
    fn every_string_the_page_asks_for_is_in_the_tables() {
        let english = asset("lang/en.json").unwrap();
        let english: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(english.body).unwrap();
        let html = std::str::from_utf8(asset("").unwrap().body).unwrap();
        let script = std::str::from_utf8(asset("kiosk.js").unwrap().body).unwrap();
        // `t("key"` calls, not `.get("key"` or `setTimeout(`.
        let calls = script.match_indices("t(\"").filter(|(at, _)| {
            !script[..*at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        });
        let asked = html
            .split("data-i18n=\"")
            .skip(1)
            .chain(calls.map(|(at, _)| &script[at + 3..]))
            .map(|rest| rest.split('"').next().unwrap());
        for key in asked {
            assert!(
                english.contains_key(key),
                "the page asks for {key:?}, which en.json lacks"
            );
        }
    }
}
