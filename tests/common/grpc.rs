//! A gRPC client of the ext_authz service, as Envoy calls it: check
//! requests, their answers in forward-auth's terms, a connected client.

use std::collections::HashMap;

use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, attribute_context};
use serde_json::Value;
use tonic::transport::Channel;

/// A `CheckRequest` as Envoy sends it: pseudo-headers included.
pub fn check_request(method: &str, target: &str, headers: &[(&str, &str)]) -> CheckRequest {
    let mut all: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    all.insert(":authority".into(), "platform.example".into());
    all.insert(":method".into(), method.into());
    all.insert(":path".into(), target.into());
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                time: None,
                http: Some(attribute_context::HttpRequest {
                    id: "1".into(),
                    method: method.into(),
                    path: target.into(),
                    host: "platform.example".into(),
                    scheme: "https".into(),
                    protocol: "HTTP/1.1".into(),
                    headers: all,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}

/// What a check answered, in the terms of forward-auth: the HTTP
/// status, the error code, the principal header and the response.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub code: String,
    pub principal: Option<String>,
    pub response: CheckResponse,
}

pub fn answer(response: CheckResponse) -> Answer {
    let rpc = response.status.clone().expect("a status");
    match response.http_response.clone().expect("an http response") {
        HttpResponse::OkResponse(ok) => {
            assert_eq!(rpc.code, 0, "an allow is OK: {response:?}");
            let principal = ok
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .find(|h| h.key == "x-orgwarden-principal")
                .map(|h| h.value.clone());
            Answer {
                status: 200,
                code: String::new(),
                principal,
                response,
            }
        }
        HttpResponse::ErrorResponse(e) => panic!("an error response: {e:?}"),
        HttpResponse::DeniedResponse(denied) => {
            assert_ne!(rpc.code, 0, "a deny is not OK: {response:?}");
            let body: Value = serde_json::from_str(&denied.body).unwrap();
            Answer {
                status: denied.status.as_ref().unwrap().code as u16,
                code: body["error"]["code"].as_str().unwrap().to_string(),
                principal: None,
                response,
            }
        }
    }
}

pub async fn client(addr: &str) -> AuthorizationClient<Channel> {
    AuthorizationClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}
