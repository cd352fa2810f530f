// The PostgreSQL variants of the tests (`embark_testkit::backend_tests!`)
// are compiled as ignored, so shown as skipped, unless
// EMBARK_TEST_DATABASE_URL is set for the build: `cfg(embark_pg_tests)`.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(embark_pg_tests)");
    println!("cargo::rerun-if-env-changed=EMBARK_TEST_DATABASE_URL");
    if std::env::var_os("EMBARK_TEST_DATABASE_URL").is_some_and(|url| !url.is_empty()) {
        println!("cargo::rustc-cfg=embark_pg_tests");
    }
}
