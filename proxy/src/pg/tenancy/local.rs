//! The tenant commands Sentinel intercepts (`SET [LOCAL] app.tenant_id = …`, `RESET …`,
//! `SET … TO DEFAULT`, a standalone `SELECT set_config('app.tenant_id', …)`) and the replies it
//! gives in their place, shaped as Postgres's would be, in both protocols.

use bytes::BytesMut;
use sentinel_policy::sql::{Arg, TenantCommand};
use sentinel_policy::tenant::{SetOutcome, TenantContext};
use sentinel_wire::encode;

use super::{Refusal, Tenancy};

const TEXT_OID: u32 = 25;
const BOOL_OID: u32 = 16;

/// A tenant command as the client prepared it (extended protocol), or sent it (simple).
#[derive(Debug, Clone)]
pub struct LocalStatement {
    pub command: TenantCommand,
    /// The command tag: `SET`, `RESET` or `SELECT 1`.
    pub tag: &'static str,
    /// Parameter types the client declared in its Parse (0: unspecified).
    pub param_types: Vec<u32>,
}

/// A bound local statement: its parameter values and the result format asked for.
#[derive(Debug, Clone)]
pub struct LocalPortal {
    pub statement: std::sync::Arc<LocalStatement>,
    pub values: Vec<Option<Vec<u8>>>,
    pub formats: Vec<i16>,
    pub result_binary: bool,
}

impl LocalStatement {
    pub fn new(command: TenantCommand, sql: &str, param_types: Vec<u32>) -> LocalStatement {
        let tag = match &command {
            TenantCommand::SetConfig { .. } => "SELECT 1",
            TenantCommand::Reset { .. } if starts_with_reset(sql) => "RESET",
            TenantCommand::Reset { .. } | TenantCommand::Set { .. } => "SET",
        };
        LocalStatement {
            command,
            tag,
            param_types,
        }
    }

    fn column(&self) -> Option<&str> {
        match &self.command {
            TenantCommand::SetConfig { column, .. } => Some(column),
            _ => None,
        }
    }

    /// ParameterDescription and RowDescription/NoData, for Describe of the statement.
    pub fn describe(&self, out: &mut BytesMut) {
        let mut types = Vec::new();
        if let TenantCommand::SetConfig {
            value, is_local, ..
        } = &self.command
        {
            for (arg, inferred) in [(value, TEXT_OID), (is_local, BOOL_OID)] {
                if let Arg::Param(n) = arg {
                    let n = usize::from(*n);
                    if types.len() < n {
                        types.resize(n, TEXT_OID);
                    }
                    types[n - 1] = inferred;
                }
            }
        }
        for (i, declared) in self.param_types.iter().enumerate() {
            if *declared != 0 && i < types.len() {
                types[i] = *declared;
            }
        }
        encode::parameter_description(out, &types);
        self.describe_rows(out, false);
    }

    /// RowDescription (with the portal's format) or NoData.
    pub fn describe_rows(&self, out: &mut BytesMut, binary: bool) {
        match self.column() {
            Some(column) => {
                encode::row_description_text_formats(out, &[(column, i16::from(binary))]);
            }
            None => encode::no_data(out),
        }
    }
}

fn starts_with_reset(sql: &str) -> bool {
    let text = sentinel_policy::tenant::strip_comments(sql);
    text.trim_start()
        .get(..5)
        .is_some_and(|w| w.eq_ignore_ascii_case("reset"))
}

/// Runs a tenant command against the connection's context and writes what Postgres would have
/// answered (without ReadyForQuery). `in_block`: a transaction block is open.
pub fn execute(
    tenancy: &Tenancy,
    context: &mut TenantContext,
    portal: &LocalPortal,
    in_block: bool,
    out: &mut BytesMut,
) -> Result<(), Refusal> {
    let stmt = &portal.statement;
    let param = |n: u16| -> Option<&[u8]> {
        portal
            .values
            .get(usize::from(n).checked_sub(1)?)
            .and_then(|v| v.as_deref())
    };
    let (value, local) = match &stmt.command {
        TenantCommand::Set { local, value } => (Some(value.clone()), *local),
        TenantCommand::Reset { local } => (None, *local),
        TenantCommand::SetConfig {
            value, is_local, ..
        } => {
            let value = match value {
                Arg::Text(s) => Some(s.clone()),
                Arg::Param(n) => match param(*n) {
                    Some(bytes) => Some(
                        std::str::from_utf8(bytes)
                            .map_err(|_| Refusal::InvalidTenant)?
                            .to_owned(),
                    ),
                    None => None,
                },
                Arg::Bool(_) | Arg::Null => None,
            };
            let local = match is_local {
                Arg::Bool(b) => *b,
                Arg::Param(n) => param(*n).is_some_and(|bytes| {
                    let binary = portal
                        .formats
                        .get(usize::from(*n) - 1)
                        .or(portal.formats.first().filter(|_| portal.formats.len() == 1))
                        .is_some_and(|f| *f == 1);
                    if binary {
                        bytes.first().is_some_and(|b| *b != 0)
                    } else {
                        matches!(
                            std::str::from_utf8(bytes).map(|s| s.trim().to_ascii_lowercase()),
                            Ok(s) if matches!(s.as_str(), "t" | "true" | "on" | "1" | "yes" | "y")
                        )
                    }
                }),
                Arg::Text(_) | Arg::Null => false,
            };
            (value.filter(|v| !v.is_empty()), local)
        }
    };
    let outcome = match &value {
        Some(v) => {
            let tenant = tenancy.parse_tenant(v)?;
            context.set(tenant, local, in_block)
        }
        None => context.reset(local, in_block),
    }
    .map_err(Refusal::Context)?;
    match outcome {
        SetOutcome::Applied => {}
        SetOutcome::LocalOutsideTransaction => {
            encode::notice_response(
                out,
                "WARNING",
                "25P01",
                "SET LOCAL can only be used in transaction blocks",
            );
        }
        SetOutcome::NoLastingEffect => {
            encode::notice_response(
                out,
                "WARNING",
                "25P01",
                "the tenant was set outside a transaction block and lasts only until the end of \
                 this statement (tenancy.scope = \"transaction\"); set it after BEGIN",
            );
        }
    }
    if stmt.column().is_some() {
        let shown = value.unwrap_or_default();
        encode::data_row(out, &[Some(shown.as_bytes())]);
    }
    encode::command_complete(out, stmt.tag);
    Ok(())
}

/// A simple-protocol tenant command: RowDescription (for the select form) and the rest.
pub fn execute_simple(
    tenancy: &Tenancy,
    context: &mut TenantContext,
    statement: LocalStatement,
    in_block: bool,
    out: &mut BytesMut,
) -> Result<(), Refusal> {
    let portal = LocalPortal {
        statement: std::sync::Arc::new(statement),
        values: Vec::new(),
        formats: Vec::new(),
        result_binary: false,
    };
    let mut body = BytesMut::new();
    execute(tenancy, context, &portal, in_block, &mut body)?;
    // NoData is an extended-protocol message: a simple SET answers with its tag alone.
    if portal.statement.column().is_some() {
        portal.statement.describe_rows(out, false);
    }
    out.extend_from_slice(&body);
    Ok(())
}
