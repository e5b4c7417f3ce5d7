//! Every way Sentinel refuses a statement or a login for tenancy, with the SQLSTATE, the message
//! a client sees and a fixed label. Messages never quote the statement or a tenant value.

use std::borrow::Cow;

use sentinel_policy::sql::Forbidden;
use sentinel_policy::tenant::{ContextError, TenantError};

#[derive(Debug, Clone)]
pub enum Refusal {
    /// The statement touches tenant data and no tenant is given.
    NoContext,
    /// Forbidden for everyone but bypass users.
    Forbidden(Forbidden),
    /// The parser could not parse it: Sentinel never passes unchecked SQL on.
    Unparsable(String),
    /// Two tenants in one transaction, or a switch away from a bound tenant.
    Context(ContextError),
    /// A tenant tag that is malformed, conflicting or in text that does not lex.
    Tag(TenantError),
    /// A tenant id the pattern refuses.
    InvalidTenant,
    /// A bare tenant tag while `signed_comments` is on.
    UnsignedTag,
    /// A tenant token in a comment that is malformed, forged or expired.
    BadCommentToken,
    /// `SET` of the tenant while the `set` source is switched off.
    SetSourceOff,
    /// A tenant from a source that is off or not trusted here (login).
    SourceRefused(&'static str),
    /// `role` or `session_authorization` among the startup settings.
    StartupRole,
    /// The fast-path function call message: it names a function by oid, past any check.
    FunctionCall,
    /// A tenant command in a failed transaction: Postgres ignores every command there.
    TransactionAborted,
    /// In one query string, a statement that needs the tenant after one that ends the
    /// transaction the tenant was set in.
    TenantAfterTransactionEnd,
    /// The tenant's database access is switched off by an operator (the admin kill switch).
    Blocked,
}

impl Refusal {
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Refusal::NoContext
            | Refusal::Forbidden(_)
            | Refusal::Context(_)
            | Refusal::SetSourceOff
            | Refusal::UnsignedTag
            | Refusal::StartupRole
            | Refusal::FunctionCall
            | Refusal::TenantAfterTransactionEnd
            | Refusal::Blocked => "42501",
            Refusal::Unparsable(_) => "42601",
            Refusal::TransactionAborted => "25P02",
            Refusal::Tag(e) => e.sqlstate().unwrap_or("42501"),
            Refusal::InvalidTenant | Refusal::SourceRefused(_) | Refusal::BadCommentToken => {
                "28000"
            }
        }
    }

    pub fn message(&self) -> Cow<'static, str> {
        match self {
            Refusal::NoContext => "tenant context required".into(),
            Refusal::Forbidden(reason) => reason.message().into(),
            Refusal::Unparsable(message) => message.clone().into(),
            Refusal::Context(e) => e.to_string().into(),
            Refusal::Tag(e) => e.to_string().into(),
            Refusal::InvalidTenant => "invalid tenant id".into(),
            Refusal::TransactionAborted => {
                "current transaction is aborted, commands ignored until end of transaction block"
                    .into()
            }
            Refusal::UnsignedTag => "tenancy.signed_comments is on: a comment must carry a tenant \
                                     token (tenant_token='...'), not a bare tenant id"
                .into(),
            Refusal::BadCommentToken => "invalid or expired tenant token in a comment".into(),
            Refusal::SetSourceOff => {
                "setting the tenant with SET or set_config is switched off (tenancy.sources)".into()
            }
            Refusal::SourceRefused(why) => (*why).into(),
            Refusal::StartupRole => {
                "role and session_authorization cannot be set at startup through Sentinel".into()
            }
            Refusal::FunctionCall => {
                "the function call protocol message is not allowed through Sentinel".into()
            }
            Refusal::TenantAfterTransactionEnd => {
                "a statement that needs the tenant follows the end of its transaction in the same \
                 query string; send it separately"
                    .into()
            }
            Refusal::Blocked => "this tenant's database access is blocked by an operator".into(),
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Refusal::NoContext => "no_context",
            Refusal::Forbidden(reason) => reason.label(),
            Refusal::Unparsable(_) => "unparsable",
            Refusal::Context(e) => e.label(),
            Refusal::Tag(e) => e.label(),
            Refusal::InvalidTenant => "invalid_tenant_id",
            Refusal::TransactionAborted => "transaction_aborted",
            Refusal::UnsignedTag => "unsigned_tag",
            Refusal::BadCommentToken => "bad_comment_token",
            Refusal::SetSourceOff => "set_source_off",
            Refusal::SourceRefused(_) => "source_refused",
            Refusal::StartupRole => "startup_role",
            Refusal::FunctionCall => "function_call",
            Refusal::TenantAfterTransactionEnd => "tenant_after_transaction_end",
            Refusal::Blocked => "blocked",
        }
    }
}
