//! Tenant context, the pure parts: what a tenant id may look like, and where a query's comment
//! says which tenant it acts for.
//!
//! Why: Sentinel makes every statement that touches tenant data run with `app.tenant_id` set to
//! its caller's tenant, and one of the ways an app names that tenant is a sqlcommenter tag in the
//! query text (`/*tenant='acme'*/ SELECT …`). Reading that tag wrong is a cross-tenant leak, so:
//!
//! - comments are found by a [lexer](comments) of Postgres SQL text (strings, `E'…'`, quoted
//!   identifiers, dollar quotes, line and nested block comments), never a regex over the query: a
//!   string literal that looks like a tag is data;
//! - text that does not lex, a malformed comment that mentions the tenant key, and two different
//!   tenants in one statement are errors ([`TenantError`]), never a guess;
//! - a tenant value is only trusted once a [`TenantIdPattern`] turned it into a [`TenantId`]; the
//!   pattern is anchored, and no pattern can let quotes, backslashes, `;`, whitespace or comment
//!   syntax into an id.
//!
//! [`strip_comments`] gives the text the verdict cache is keyed by, so the same statement with a
//! thousand different tags is one entry.
//!
//! Pure: no I/O, no runtime, no clock. The SQL classifier and the proxy wiring build on this.
//!
//! # Pieces
//!
//! - `id`: [`TenantId`], [`TenantIdPattern`] ([`DEFAULT_TENANT_ID_PATTERN`]).
//! - `lex`: [`comments`] / [`block_comments`]: top-level comments with their byte spans.
//! - `comment`: [`sqlcommenter_tags`], [`tenant_tag`], [`tenant_id_from_comments`].
//! - `strip`: [`strip_comments`].
//! - `context`: [`TenantContext`]: which tenant a connection's statements act for.
//! - `error`: [`TenantError`] with [`TenantError::sqlstate`] and [`TenantError::label`].

mod comment;
mod context;
mod error;
mod id;
mod lex;
mod strip;

pub use comment::{
    DEFAULT_TENANT_KEY, Tags, sqlcommenter_tags, sqlcommenter_tags_for_key,
    tenant_id_from_comments, tenant_tag,
};
pub use context::{ContextError, SetOutcome, SetScope, TenantContext};
pub use error::{TenantError, Unterminated};
pub use id::{DEFAULT_TENANT_ID_PATTERN, MAX_TENANT_ID_LEN, TenantId, TenantIdPattern};
pub use lex::{Comment, CommentKind, Comments, block_comments, comments, mask_constants};
pub use strip::{blank_tagged_comments, strip_comments};
