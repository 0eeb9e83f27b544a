//! Which Docker API calls the proxy intercepts (weave-reference.md §2.1): the path, with or
//! without an API version prefix (`/v1.41/containers/create`).

/// An intercepted call; everything else is [`Route::Other`] and passes through untouched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `POST /containers/create`
    Create,
    /// `POST /containers/{id}/start` or `/restart`
    Start(String),
    /// `GET /containers/{id}/json`
    Inspect(String),
    /// `POST /containers/{id}/exec`
    ExecCreate(String),
    /// Anything else.
    Other,
}

/// Strips an optional `/vX.Y` prefix.
fn unversioned(path: &str) -> &str {
    if let Some(rest) = path.strip_prefix("/v") {
        if let Some(slash) = rest.find('/') {
            let version = &rest[..slash];
            if !version.is_empty() && version.chars().all(|c| c.is_ascii_digit() || c == '.') {
                return &rest[slash..];
            }
        }
    }
    path
}

/// Classifies a request by method and path (without the query).
pub fn classify(method: &str, path: &str) -> Route {
    let path = unversioned(path);
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        ("POST", ["", "containers", "create"]) => Route::Create,
        ("POST", ["", "containers", id, "start" | "restart"]) if !id.is_empty() => {
            Route::Start((*id).to_owned())
        }
        ("GET", ["", "containers", id, "json"]) if !id.is_empty() => {
            Route::Inspect((*id).to_owned())
        }
        ("POST", ["", "containers", id, "exec"]) if !id.is_empty() => {
            Route::ExecCreate((*id).to_owned())
        }
        _ => Route::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_and_plain_paths() {
        assert_eq!(classify("POST", "/v1.41/containers/create"), Route::Create);
        assert_eq!(classify("POST", "/containers/create"), Route::Create);
        assert_eq!(
            classify("POST", "/v1.24/containers/abc/start"),
            Route::Start("abc".into())
        );
        assert_eq!(
            classify("POST", "/containers/abc/restart"),
            Route::Start("abc".into())
        );
        assert_eq!(
            classify("GET", "/v1.41/containers/abc/json"),
            Route::Inspect("abc".into())
        );
        assert_eq!(
            classify("POST", "/containers/abc/exec"),
            Route::ExecCreate("abc".into())
        );
        // Not intercepted: other methods, lists, images, version-looking names.
        assert_eq!(classify("GET", "/containers/create"), Route::Other);
        assert_eq!(classify("GET", "/v1.41/containers/json"), Route::Other);
        assert_eq!(classify("POST", "/containers/abc/kill"), Route::Other);
        assert_eq!(classify("GET", "/vX/containers/abc/json"), Route::Other);
        assert_eq!(classify("POST", "/containers//start"), Route::Other);
    }
}
