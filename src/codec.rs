//! Streaming gzip / zstd decoding (owned by the qdb-unzip work).
