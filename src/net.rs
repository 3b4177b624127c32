//! TCP listen / connect (owned by the qdb-recv work).
