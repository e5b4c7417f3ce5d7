//! One client connection's tenant context: which tenant each of its statements acts for.
//!
//! Three layers, strongest first:
//! - a tenant the whole connection is **bound** to (by its token or startup parameter): nothing
//!   may name another one;
//! - the tenant of the current **transaction**, fixed by the first statement that names or uses
//!   one: a second, different tenant in the same transaction is refused, because the server
//!   transaction already ran with the first;
//! - a **session** tenant from `SET app.tenant_id = …` under `scope = "session"`, which each new
//!   transaction takes on.
//!
//! Pure: the caller says when a transaction ends (it tracks the protocol) and whether a
//! transaction block is open.

use super::id::TenantId;

/// How long a tenant from the `set` source lasts (config `tenancy.scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetScope {
    /// Until the end of the transaction it was set in.
    Transaction,
    /// Until changed or reset.
    Session,
}

/// Why a tenant cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    #[error("two different tenants in one transaction")]
    TwoTenants,
    #[error(
        "this connection is bound to a tenant by its token or startup parameter and cannot act for another"
    )]
    BoundSwitch,
}

impl ContextError {
    pub const fn sqlstate(&self) -> &'static str {
        "42501"
    }

    pub const fn label(&self) -> &'static str {
        match self {
            ContextError::TwoTenants => "two_tenants",
            ContextError::BoundSwitch => "bound_switch",
        }
    }
}

/// What a `SET`/`RESET` of the tenant did, so the answer can say so as Postgres would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    Applied,
    /// `SET LOCAL` outside a transaction block: Postgres warns and does nothing.
    LocalOutsideTransaction,
    /// A plain `SET` outside a transaction block under `scope = "transaction"`: it lasts only
    /// until the end of its own (implicit) transaction, that is, not at all.
    NoLastingEffect,
}

#[derive(Debug, Clone)]
pub struct TenantContext {
    bound: Option<TenantId>,
    session: Option<TenantId>,
    transaction: Option<TenantId>,
    scope: SetScope,
}

impl TenantContext {
    pub fn new(bound: Option<TenantId>, scope: SetScope) -> Self {
        TenantContext {
            bound,
            session: None,
            transaction: None,
            scope,
        }
    }

    pub fn bound(&self) -> Option<&TenantId> {
        self.bound.as_ref()
    }

    /// The tenant the current transaction acts for, if it has one yet.
    pub fn transaction(&self) -> Option<&TenantId> {
        self.transaction.as_ref()
    }

    /// Whether a statement without a tag would have a tenant.
    pub fn has_tenant(&self) -> bool {
        self.current().is_some()
    }

    fn current(&self) -> Option<&TenantId> {
        self.bound
            .as_ref()
            .or(self.transaction.as_ref())
            .or(self.session.as_ref())
    }

    /// The tenant a statement acts for, given the tenant its comment names (if any); fixes the
    /// transaction's tenant on first use.
    pub fn for_statement(
        &mut self,
        tag: Option<&TenantId>,
    ) -> Result<Option<TenantId>, ContextError> {
        if let Some(tag) = tag {
            self.check_switch(tag)?;
            // A session tenant is the tenant of every transaction that names no other: a tag
            // naming another one puts two tenants in the app's hands at once, a bug to refuse.
            if self.transaction.is_none() && self.session.as_ref().is_some_and(|s| s != tag) {
                return Err(ContextError::TwoTenants);
            }
        }
        let tenant = match tag {
            Some(tag) => Some(tag.clone()),
            None => self.current().cloned(),
        };
        if self.transaction.is_none() {
            self.transaction = tenant.clone();
        }
        Ok(tenant)
    }

    fn check_switch(&self, tenant: &TenantId) -> Result<(), ContextError> {
        if self.bound.as_ref().is_some_and(|b| b != tenant) {
            return Err(ContextError::BoundSwitch);
        }
        if self.transaction.as_ref().is_some_and(|t| t != tenant) {
            return Err(ContextError::TwoTenants);
        }
        Ok(())
    }

    /// `SET [LOCAL] <tenant setting> = tenant` (or the standalone `set_config`), with a
    /// transaction block open or not.
    pub fn set(
        &mut self,
        tenant: TenantId,
        local: bool,
        in_block: bool,
    ) -> Result<SetOutcome, ContextError> {
        self.check_switch(&tenant)?;
        if !in_block {
            if local {
                return Ok(SetOutcome::LocalOutsideTransaction);
            }
            if self.scope == SetScope::Transaction {
                return Ok(SetOutcome::NoLastingEffect);
            }
        }
        if !local && self.scope == SetScope::Session {
            self.session = Some(tenant.clone());
        }
        if in_block {
            self.transaction = Some(tenant);
        }
        Ok(SetOutcome::Applied)
    }

    /// `RESET <tenant setting>` / `SET … TO DEFAULT`: a switch to no tenant, refused like any
    /// other switch on a bound connection or inside a transaction that already acts for one.
    pub fn reset(&mut self, local: bool, in_block: bool) -> Result<SetOutcome, ContextError> {
        if self.bound.is_some() {
            return Err(ContextError::BoundSwitch);
        }
        if in_block && self.transaction.is_some() {
            return Err(ContextError::TwoTenants);
        }
        if local && !in_block {
            return Ok(SetOutcome::LocalOutsideTransaction);
        }
        if !local {
            self.session = None;
        }
        Ok(SetOutcome::Applied)
    }

    /// `RESET ALL` / `DISCARD ALL`: the session tenant goes; a bound one and the current
    /// transaction's stay.
    pub fn clear_session(&mut self) {
        self.session = None;
    }

    /// The transaction ended (committed or rolled back).
    pub fn end_transaction(&mut self) {
        self.transaction = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::TenantIdPattern;

    fn t(id: &str) -> TenantId {
        TenantIdPattern::new(crate::tenant::DEFAULT_TENANT_ID_PATTERN)
            .expect("pattern")
            .parse(id)
            .expect("id")
    }

    #[test]
    fn tag_fixes_the_transaction_tenant() {
        let mut c = TenantContext::new(None, SetScope::Transaction);
        assert_eq!(c.for_statement(None), Ok(None));
        assert_eq!(c.for_statement(Some(&t("a"))), Ok(Some(t("a"))));
        assert_eq!(c.for_statement(None), Ok(Some(t("a"))));
        assert_eq!(c.for_statement(Some(&t("a"))), Ok(Some(t("a"))));
        assert_eq!(
            c.for_statement(Some(&t("b"))),
            Err(ContextError::TwoTenants)
        );
        c.end_transaction();
        assert_eq!(c.for_statement(None), Ok(None));
        assert_eq!(c.for_statement(Some(&t("b"))), Ok(Some(t("b"))));
    }

    #[test]
    fn bound_connection_cannot_switch() {
        let mut c = TenantContext::new(Some(t("a")), SetScope::Session);
        assert_eq!(c.for_statement(None), Ok(Some(t("a"))));
        assert_eq!(
            c.for_statement(Some(&t("b"))),
            Err(ContextError::BoundSwitch)
        );
        assert_eq!(c.set(t("b"), false, false), Err(ContextError::BoundSwitch));
        assert_eq!(c.set(t("a"), false, false), Ok(SetOutcome::Applied));
        assert_eq!(c.reset(false, false), Err(ContextError::BoundSwitch));
        c.end_transaction();
        assert_eq!(c.for_statement(None), Ok(Some(t("a"))));
    }

    #[test]
    fn transaction_scope_set() {
        let mut c = TenantContext::new(None, SetScope::Transaction);
        assert_eq!(c.set(t("a"), false, false), Ok(SetOutcome::NoLastingEffect));
        assert!(!c.has_tenant());
        assert_eq!(
            c.set(t("a"), true, false),
            Ok(SetOutcome::LocalOutsideTransaction)
        );
        assert_eq!(c.set(t("a"), false, true), Ok(SetOutcome::Applied));
        assert_eq!(c.for_statement(None), Ok(Some(t("a"))));
        assert_eq!(c.set(t("b"), true, true), Err(ContextError::TwoTenants));
        c.end_transaction();
        assert!(!c.has_tenant());
    }

    #[test]
    fn session_scope_set_and_reset() {
        let mut c = TenantContext::new(None, SetScope::Session);
        assert_eq!(c.set(t("a"), false, false), Ok(SetOutcome::Applied));
        assert_eq!(c.for_statement(None), Ok(Some(t("a"))));
        c.end_transaction();
        // A tag for another tenant than the session's is refused; the same one is fine.
        assert_eq!(
            c.for_statement(Some(&t("b"))),
            Err(ContextError::TwoTenants)
        );
        assert_eq!(c.for_statement(Some(&t("a"))), Ok(Some(t("a"))));
        c.end_transaction();
        // A new transaction may take another tenant.
        assert_eq!(c.set(t("b"), false, false), Ok(SetOutcome::Applied));
        assert_eq!(c.for_statement(None), Ok(Some(t("b"))));
        // Inside it, neither a reset nor another tenant.
        assert_eq!(c.reset(false, true), Err(ContextError::TwoTenants));
        assert_eq!(c.set(t("a"), false, true), Err(ContextError::TwoTenants));
        c.end_transaction();
        assert_eq!(c.reset(false, false), Ok(SetOutcome::Applied));
        assert_eq!(c.for_statement(None), Ok(None));
        // SET LOCAL in a block does not outlive it.
        assert_eq!(c.set(t("c"), true, true), Ok(SetOutcome::Applied));
        assert_eq!(c.for_statement(None), Ok(Some(t("c"))));
        c.end_transaction();
        assert!(!c.has_tenant());
    }
}
