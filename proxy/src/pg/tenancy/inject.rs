//! What Sentinel sends to the server so a transaction runs with its tenant:
//! `set_config('<setting>', '<tenant>', true)` (and a per-tenant `statement_timeout`), in the same
//! transaction as the client's statement.
//!
//! - Simple protocol: a prefix statement in the same Query text, so it runs in the same implicit
//!   transaction (or the explicit one a later `BEGIN` in the text turns it into).
//! - Extended protocol: a Bind/Execute/Close of a statement named for Sentinel, sent before the
//!   client's first Bind of the batch; never the unnamed statement or portal, which are the
//!   client's.
//!
//! Tenant ids are safe to put in SQL text: the id pattern admits no quote, backslash or
//! whitespace (`TenantIdPattern`), and the setting name is checked at config load.

use bytes::BytesMut;
use sentinel_policy::tenant::TenantId;
use sentinel_wire::{TargetKind, encode};

/// Server-side statement that sets the tenant; `_timeout` also sets `statement_timeout`.
/// Client statement names with Sentinel's prefix never reach a server unmapped.
pub const STATEMENT: &str = "sentinel_tenant";
pub const STATEMENT_WITH_TIMEOUT: &str = "sentinel_tenant_timeout";
/// The portal the injected statement runs in, closed right after.
const PORTAL: &str = "sentinel_tenant";

/// The prefix for a simple Query. Its length in characters is what error positions shift by.
pub fn simple_prefix(setting: &str, tenant: &TenantId, timeout: Option<&str>) -> String {
    match timeout {
        None => format!(
            "SELECT pg_catalog.set_config('{setting}', '{}', true);",
            tenant.as_str()
        ),
        Some(timeout) => format!(
            "SELECT pg_catalog.set_config('{setting}', '{}', true), \
             pg_catalog.set_config('statement_timeout', '{timeout}', true);",
            tenant.as_str()
        ),
    }
}

/// The Parse that prepares [`statement_name`] on a server.
pub fn statement(buf: &mut BytesMut, setting: &str, with_timeout: bool) {
    const TEXT_OID: u32 = 25;
    if with_timeout {
        let sql = format!(
            "SELECT pg_catalog.set_config('{setting}', $1, true), \
             pg_catalog.set_config('statement_timeout', $2, true)"
        );
        encode::parse(buf, STATEMENT_WITH_TIMEOUT, &sql, &[TEXT_OID, TEXT_OID]);
    } else {
        let sql = format!("SELECT pg_catalog.set_config('{setting}', $1, true)");
        encode::parse(buf, STATEMENT, &sql, &[TEXT_OID]);
    }
}

/// The statement [`statement`] prepares for a tenant with or without a timeout.
pub fn statement_name(with_timeout: bool) -> &'static str {
    if with_timeout {
        STATEMENT_WITH_TIMEOUT
    } else {
        STATEMENT
    }
}

/// The Bind of the prepared statement for `tenant` into Sentinel's portal. Execute and Close
/// that portal with [`execute`] and [`close`]; every reply is Sentinel's.
pub fn bind(buf: &mut BytesMut, tenant: &TenantId, timeout: Option<&str>) {
    let mut params: Vec<Option<&[u8]>> = vec![Some(tenant.as_str().as_bytes())];
    if let Some(t) = timeout {
        params.push(Some(t.as_bytes()));
    }
    encode::bind(
        buf,
        PORTAL,
        statement_name(timeout.is_some()),
        &[],
        &params,
        &[],
    );
}

pub fn execute(buf: &mut BytesMut) {
    encode::execute(buf, PORTAL, 0);
}

pub fn close(buf: &mut BytesMut) {
    encode::close(buf, TargetKind::Portal, PORTAL);
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentinel_policy::tenant::{DEFAULT_TENANT_ID_PATTERN, TenantIdPattern};

    #[test]
    fn prefix_text() {
        let t = TenantIdPattern::new(DEFAULT_TENANT_ID_PATTERN)
            .expect("pattern")
            .parse("acme")
            .expect("id");
        assert_eq!(
            simple_prefix("app.tenant_id", &t, None),
            "SELECT pg_catalog.set_config('app.tenant_id', 'acme', true);"
        );
        assert!(simple_prefix("app.tenant_id", &t, Some("5000ms")).contains("'5000ms', true);"));
    }
}
