//! The Tablets page: the paired tablets (name, paired, last seen, address), pairing a new one (its
//! one-time link shown once as a QR code the tablet's camera opens), revoking one, and the certificate
//! a tablet installs to trust the door. The same tablets file and lock as `facegate tablets`.

use chrono::Utc;
use serde_json::json;

use super::form::Fields;
use super::pages::{self, Notice};
use super::{Admin, AdminResponse, Flash, Session};
use crate::tablets::book::time_text;
use crate::tablets::{link, TabletStore};

const TABLETS: &str = "/admin/tablets";
/// Width of the pairing QR code on screen, in pixels.
const QR_SIDE: u32 = 280;

impl Admin {
    fn tablet_store(&self) -> TabletStore {
        TabletStore::new(self.ctx.config.tablets_path())
    }

    /// GET /admin/tablets, with what the last form left: a notice, and a new pairing link once.
    pub(super) fn tablets_page(&self, session: &Session) -> AdminResponse {
        let flash = self.sessions.take_flash(&session.secret);
        let (notice, pairing) = flash.map_or((None, None), |flash| (flash.notice, flash.pairing));
        let mut chrome = self.chrome(Some(session), "tablets");
        chrome.notice = notice;
        let now = Utc::now();
        let rows = match self.tablet_store().load() {
            Ok(book) => book
                .tablets
                .iter()
                .map(|(name, tablet)| pages::TabletRow {
                    name: name.clone(),
                    paired: tablet.pairing_text(now),
                    last_seen: time_text(tablet.last_seen),
                    address: tablet.last_address.clone().unwrap_or_else(|| "-".into()),
                })
                .collect(),
            Err(err) => {
                chrome.notice = Notice::bad(err.to_string());
                Vec::new()
            }
        };
        let page = pages::Tablets {
            chrome,
            rows,
            pairing,
            tls: self.ctx.config.http.tls.enabled,
        };
        AdminResponse::page(200, &page)
    }

    /// POST /admin/tablets/add: a one-time pairing link for the named tablet, shown once.
    pub(super) fn add_tablet(
        &self,
        session: &Session,
        fields: &Fields,
        peer: &str,
    ) -> AdminResponse {
        let name = fields.get("name").unwrap_or_default().trim();
        let added = self
            .tablet_store()
            .update(|book| book.add(name, Utc::now(), &mut crate::tablets::book::OsRandom));
        let secret = match added {
            Ok(secret) => secret,
            Err(err) => {
                return self.after_post(session, TABLETS, Notice::bad(err.to_string()), None)
            }
        };
        let config = &self.ctx.config;
        let host = link::lan_host(
            config.http.listen,
            crate::host::routed_address(),
            &crate::host::interface_addresses(),
        );
        let url = link::pairing_link(
            config.http.tls.enabled,
            &host,
            config.http.listen.port(),
            &secret,
        );
        log::info!("admin made a pairing link for tablet {name} from {peer}");
        self.audit(json!({"action": "tablet_add", "tablet": name, "remote": peer}));
        let pairing = pages::PairingView {
            name: name.to_string(),
            qr_svg: link::qr_svg(&url, QR_SIDE),
            link: url,
        };
        self.sessions.set_flash(
            &session.secret,
            Flash {
                notice: None,
                enrolled: None,
                pairing: Some(pairing),
            },
        );
        AdminResponse::redirect(TABLETS)
    }

    /// POST /admin/tablets/revoke: the tablet's token stops working at once.
    pub(super) fn revoke_tablet(
        &self,
        session: &Session,
        fields: &Fields,
        peer: &str,
    ) -> AdminResponse {
        let name = fields.get("name").unwrap_or_default();
        let notice = match self.tablet_store().update(|book| book.revoke(name)) {
            Ok(_) => {
                log::info!("admin revoked tablet {name} from {peer}");
                self.audit(json!({"action": "tablet_revoke", "tablet": name, "remote": peer}));
                Notice::ok(format!(
                    "Revoked {name}: its page shows that it is not paired."
                ))
            }
            Err(err) => Notice::bad(err.to_string()),
        };
        self.after_post(session, TABLETS, notice, None)
    }

    /// GET /admin/tablets/facegate-door.crt: the certificate a tablet installs (a CA certificate).
    pub(super) fn tablet_certificate(&self, session: &Session) -> AdminResponse {
        let Some(certificate) = &self.ctx.tablet_certificate else {
            return self.not_found(session);
        };
        match certificate() {
            Ok(pem) => AdminResponse::new(200, "application/x-x509-ca-cert", pem.into_bytes())
                .with(
                    "Content-Disposition",
                    "attachment; filename=\"facegate-door.crt\"",
                ),
            Err(err) => self.message(Some(session), 500, "No certificate", &err, TABLETS),
        }
    }
}
