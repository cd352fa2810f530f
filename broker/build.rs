// `sqlx::migrate!` embeds broker/migrations/{sqlite,postgres} at compile
// time; rebuild when they change.
//
// The PostgreSQL tests are compiled as ignored (shown as skipped) unless
// EMBARK_TEST_DATABASE_URL is set for the build: `cfg(embark_pg_tests)`.
fn main() {
    println!("cargo::rerun-if-changed=migrations");
    println!("cargo::rustc-check-cfg=cfg(embark_pg_tests)");
    println!("cargo::rerun-if-env-changed=EMBARK_TEST_DATABASE_URL");
    if std::env::var_os("EMBARK_TEST_DATABASE_URL").is_some_and(|url| !url.is_empty()) {
        println!("cargo::rustc-cfg=embark_pg_tests");
    }
}
