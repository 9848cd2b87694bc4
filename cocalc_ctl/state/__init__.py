"""Host sqlite and hub PostgreSQL access, each with versioned migrations."""
