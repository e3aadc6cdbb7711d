//! The local broker's storage: Tansu's SQLite schema with the index the
//! stack adds (see `start_tansu`).

use std::process::Command;

use triggers_stack::TestStack;

/// Tansu's fetch looks up each returned record's headers with this query
/// (`header_fetch.sql` of tansu-storage 0.6.0).
const HEADER_FETCH: &str = "select h.k, h.v from header h \
    join record r on h.topition = r.topition and h.offset_id = r.offset_id \
    join topition tp on tp.id = r.topition join topic t on tp.topic = t.id \
    join cluster c on t.cluster = c.id \
    where c.name = 'c' and t.name = 't' and tp.partition = 0 and r.offset_id = 1";

#[test]
fn header_lookups_search_an_index_instead_of_scanning_every_header() -> std::io::Result<()> {
    let stack = TestStack::shared();
    let db = stack.dir().join("tansu").join("tansu.db");
    let output = Command::new(&stack.tools().sqlite3)
        .arg("-readonly")
        .arg(&db)
        .arg(format!("explain query plan {HEADER_FETCH};"))
        .output()?;
    let plan = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "sqlite3: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        plan.contains("SEARCH h USING INDEX header_topition_offset"),
        "Tansu's header lookup does not use the index:\n{plan}"
    );
    assert!(
        !plan.contains("SCAN h"),
        "Tansu's header lookup scans the table:\n{plan}"
    );
    Ok(())
}
