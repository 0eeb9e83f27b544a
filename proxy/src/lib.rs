//! Layer: driver. Docker Engine API proxy. A skeleton until the proxy issue (see issue 5).
#![forbid(unsafe_code)]
