//! ValkeyGetRewrite: an example custom transform. It replaces the value of every successful
//! `GET` reply with a configured string, and passes everything else through.
//!
//! ```yaml
//! - ValkeyGetRewrite:
//!     result: "Rewritten value"
//! ```

use shotover::chain::prelude::*;
use shotover::message::Frame;
use shotover::protocols::valkey::frame::bulk;

/// The YAML of the transform.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValkeyGetRewriteConfig {
    /// The value every GET returns instead of the stored one.
    pub result: String,
}

impl TransformConfig for ValkeyGetRewriteConfig {
    const NAME: &'static str = "ValkeyGetRewrite";
    const TERMINATING: bool = false;
    const PROTOCOLS: &'static [Protocol] = &[Protocol::Valkey];
    /// Once per core; the closure makes the transform of each client connection.
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn TransformBuilder>> {
        let result = self.result.clone();
        Ok(Box::new(move || ValkeyGetRewrite { result: result.clone() }))
    }
}

pub struct ValkeyGetRewrite {
    result: String,
}

#[async_trait(?Send)]
impl Transform for ValkeyGetRewrite {
    async fn transform(&mut self, state: &mut ChainState<'_>) -> ChainResult {
        // Which requests are GETs, read from the raw bytes without parsing them.
        let gets: Vec<bool> = state.requests.iter().map(|r| r.valkey_request().is_some_and(|v| v.is("GET"))).collect();
        let mut responses = state.call_next_transform().await?;
        for (response, is_get) in responses.iter_mut().zip(gets) {
            // Only bulk-string replies: a missing key (null) or an error stays as it is.
            let is_value = response.raw().is_some_and(|raw| raw.first() == Some(&b'$') && !raw.starts_with(b"$-1"));
            if is_get && is_value {
                *response.frame_mut()? = Frame::Valkey(bulk(self.result.clone()));
            }
        }
        Ok(responses)
    }
}
