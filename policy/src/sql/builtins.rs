//! Which unqualified function names are built in.
//!
//! An unqualified call resolves through `search_path`, where `pg_catalog` comes first unless the
//! session puts it elsewhere, so a name that exists in `pg_catalog` is taken as the built-in and
//! any other name as a user function (which may read tenant tables, so it needs a tenant).
//!
//! `builtins.txt` holds every distinct `proname` in `pg_catalog` of PostgreSQL 15 (2646 names),
//! one per line. It was generated from a fresh cluster of the Debian `postgresql-15` package
//! (15.18), as root:
//!
//! ```sh
//! D=$(mktemp -d); chown postgres "$D"
//! runuser -u postgres -- /usr/lib/postgresql/15/bin/initdb -D "$D/data" -A trust -U postgres
//! runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$D/data" \
//!     -o "-p $PORT -k /tmp -c listen_addresses=''" -w start
//! runuser -u postgres -- psql -h /tmp -p $PORT -U postgres -At -c \
//!     "select distinct proname from pg_proc where pronamespace = 'pg_catalog'::regnamespace order by 1" \
//!     > policy/src/sql/builtins.txt
//! runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$D/data" -w stop; rm -rf "$D"
//! ```
//!
//! Names are compared exactly: the parser folds unquoted names to lower case, and the few
//! mixed-case built-ins (`RI_FKey_check_ins`, …) can only be called quoted.
//!
//! Limits, accepted: a function added to `pg_catalog` after 15 is taken as a user function when
//! unqualified (it then needs a tenant; `pg_catalog.f` always works), and a session that puts a
//! schema before `pg_catalog` in `search_path`, or a user overload with a better-matching
//! signature, can shadow a built-in name. Row-level security still applies inside such a
//! function; only the proxy's up-front check is skipped.

use std::collections::HashSet;
use std::sync::LazyLock;

/// The generated list (see the module docs).
const BUILTINS_TXT: &str = include_str!("builtins.txt");

static BUILTINS: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    BUILTINS_TXT
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect()
});

/// True when an unqualified function named `name` is a `pg_catalog` built-in.
pub(super) fn is_builtin_function(name: &str) -> bool {
    BUILTINS.contains(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_is_complete_enough_and_exact() {
        assert!(BUILTINS.len() > 2500, "{}", BUILTINS.len());
        for name in [
            "now",
            "count",
            "set_config",
            "current_setting",
            "generate_series",
            "jsonb_build_object",
            "pg_advisory_lock",
            "query_to_xml",
            "RI_FKey_check_ins",
        ] {
            assert!(is_builtin_function(name), "{name}");
        }
        for name in ["my_func", "NOW", "coalesce", "", "dblink"] {
            assert!(!is_builtin_function(name), "{name}");
        }
    }
}
