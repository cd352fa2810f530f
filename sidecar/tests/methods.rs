//! The sidecar serves exactly the methods of `embark_core::protocol::METHODS`,
//! the table the OpenRPC document and the shim's method constants come from.
//! (That each error a method answers is one its entry declares is checked on
//! every answer of the other tests, see `common::assert_declared`.)

use std::sync::Arc;

use embark_core::protocol::METHODS;
use embark_sidecar::config::Config;
use embark_sidecar::handlers::Handlers;
use embark_sidecar::rpc::EmbarkRpc;
use embark_sidecar::session::Session;

#[test]
fn the_rpc_module_serves_the_method_table() {
    let module = EmbarkRpc::module(Arc::new(Handlers::new(Config::default())), Arc::new(Session::new()));
    let mut served: Vec<&str> = module.method_names().collect();
    served.sort_unstable();
    let mut declared: Vec<&str> = METHODS.iter().map(|method| method.name).collect();
    declared.sort_unstable();
    assert_eq!(served, declared, "the methods of rpc.rs vs protocol::METHODS");
}
