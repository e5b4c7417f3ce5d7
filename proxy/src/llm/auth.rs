//! The caller's virtual key: `Authorization: Bearer sk-stn-…` (OpenAI SDKs, Anthropic's
//! `auth_token`) or `x-api-key: sk-stn-…` (Anthropic's `api_key`).

use http::HeaderMap;

use super::error::EgressError;

/// The key the request presents. Both headers with different values is ambiguous and refused.
pub fn credential(headers: &HeaderMap) -> Result<&str, EgressError> {
    let bearer = match headers.get(http::header::AUTHORIZATION) {
        Some(v) => {
            let v = v
                .to_str()
                .map_err(|_| EgressError::Unauthorized("malformed Authorization header"))?;
            let token = v
                .strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
                .ok_or(EgressError::Unauthorized(
                    "Authorization must be `Bearer <virtual key>`",
                ))?;
            Some(token.trim())
        }
        None => None,
    };
    let api_key = match headers.get("x-api-key") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| EgressError::Unauthorized("malformed x-api-key header"))?
                .trim(),
        ),
        None => None,
    };
    match (bearer, api_key) {
        (Some(a), Some(b)) if a != b => Err(EgressError::Unauthorized(
            "Authorization and x-api-key carry different keys",
        )),
        (Some(k), _) | (None, Some(k)) if !k.is_empty() => Ok(k),
        _ => Err(EgressError::Unauthorized(
            "missing API key: send a Sentinel virtual key (sk-stn-...) as the API key",
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn either_header_carries_the_key() {
        assert_eq!(
            credential(&headers(&[("authorization", "Bearer sk-stn-a")])).unwrap(),
            "sk-stn-a"
        );
        assert_eq!(
            credential(&headers(&[("x-api-key", "sk-stn-b")])).unwrap(),
            "sk-stn-b"
        );
        assert_eq!(
            credential(&headers(&[
                ("authorization", "Bearer k"),
                ("x-api-key", "k")
            ]))
            .unwrap(),
            "k"
        );
        for bad in [
            headers(&[]),
            headers(&[("authorization", "Basic abc")]),
            headers(&[("authorization", "Bearer ")]),
            headers(&[("authorization", "Bearer a"), ("x-api-key", "b")]),
        ] {
            assert!(matches!(
                credential(&bad),
                Err(EgressError::Unauthorized(_))
            ));
        }
    }
}
