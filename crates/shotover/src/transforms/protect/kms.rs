//! The `AWSKms` key manager's client: AWS KMS through `aws-sdk-kms`, which needs tokio, so
//! it runs on the control core. Workers send it jobs over a channel and await the answer
//! on a oneshot, which never blocks their core.

use crate::chain::ControlHandle;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use shotover_executor::control::channel::{mpsc, oneshot};
use std::time::Duration;

/// How long one KMS call (retries included) may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the key manager's KMS is.
#[derive(Debug, Clone)]
pub struct KmsSettings {
    pub endpoint: String,
    pub region: String,
    pub cmk_id: String,
    pub number_of_bytes: i32,
}

/// A DEK's plaintext and its wrapped bytes.
type DataKey = (Vec<u8>, Vec<u8>);

/// Why KMS gave no key.
#[derive(Debug, Clone, PartialEq)]
pub enum KmsError {
    /// KMS cannot be reached, or is overloaded: try again later.
    Unavailable(String),
    /// KMS answered no for this key (a wrapped DEK it cannot decrypt, a key it does not
    /// have, a permission): asking again changes nothing.
    Refused(String),
}

/// How long a worker waits for the control core's answer: a little longer than the SDK's
/// own limit, so that it only passes if the control core itself is stuck.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(7);

enum Job {
    /// GenerateDataKey: a DEK, plaintext and wrapped.
    Generate(oneshot::Sender<Result<DataKey, KmsError>>),
    /// Decrypt: a wrapped DEK's plaintext.
    Decrypt(Vec<u8>, oneshot::Sender<Result<Vec<u8>, KmsError>>),
}

/// A worker's way to the KMS client on the control core.
#[derive(Clone)]
pub struct Kms {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Kms {
    /// Starts the client on the control core.
    pub fn start(control: &ControlHandle, settings: KmsSettings) -> Kms {
        let (jobs, rx) = mpsc::unbounded_channel();
        control.spawn(serve(rx, settings, control.clone()));
        Kms { jobs }
    }

    /// A new DEK: its plaintext, and its wrapped bytes (the CiphertextBlob) to store.
    pub async fn generate(&self) -> Result<DataKey, KmsError> {
        let (tx, rx) = oneshot::channel();
        self.jobs.send(Job::Generate(tx)).map_err(|_| stopped())?;
        answer(rx).await
    }

    /// The plaintext of a wrapped DEK.
    pub async fn decrypt(&self, enc_dek: Vec<u8>) -> Result<Vec<u8>, KmsError> {
        let (tx, rx) = oneshot::channel();
        self.jobs.send(Job::Decrypt(enc_dek, tx)).map_err(|_| stopped())?;
        answer(rx).await
    }
}

fn stopped() -> KmsError {
    KmsError::Unavailable("the KMS client has stopped".into())
}

async fn answer<T>(rx: oneshot::Receiver<Result<T, KmsError>>) -> Result<T, KmsError> {
    let timeout = async {
        crate::rt::sleep(ANSWER_TIMEOUT).await;
        Err(KmsError::Unavailable(format!("no answer from the KMS client within {ANSWER_TIMEOUT:?}")))
    };
    futures_lite::future::or(async { rx.await.map_err(|_| stopped())? }, timeout).await
}

/// Sorts an SDK error: KMS's own "no" for this request, or anything else (no connection,
/// a timeout, throttling, KMS's internal errors).
fn kms_error<E>(operation: &str, e: SdkError<E>) -> KmsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let transient =
        ["ThrottlingException", "KMSInternalException", "DependencyTimeoutException", "KeyUnavailableException"];
    let refused = match &e {
        SdkError::ServiceError(service) => service.err().code().is_none_or(|code| !transient.contains(&code)),
        _ => false,
    };
    let text = format!("{operation} failed: {}", aws_sdk_kms::error::DisplayErrorContext(e));
    if refused {
        KmsError::Refused(text)
    } else {
        KmsError::Unavailable(text)
    }
}

async fn serve(mut jobs: mpsc::UnboundedReceiver<Job>, settings: KmsSettings, control: ControlHandle) {
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .operation_timeout(CALL_TIMEOUT)
        .connect_timeout(Duration::from_secs(2))
        .build();
    // Credentials come from the SDK's default chain: the environment, the profile files,
    // web identity, ECS or EC2 instance metadata.
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(settings.region.clone()))
        .endpoint_url(settings.endpoint.clone())
        .timeout_config(timeouts)
        .load()
        .await;
    let client = aws_sdk_kms::Client::new(&config);
    while let Some(job) = jobs.recv().await {
        let (client, settings) = (client.clone(), settings.clone());
        // Calls run side by side: a slow one does not hold the others up.
        control.spawn(async move {
            match job {
                Job::Generate(reply) => {
                    let _ = reply.send(generate(&client, &settings).await);
                }
                Job::Decrypt(enc_dek, reply) => {
                    let _ = reply.send(decrypt(&client, &settings, enc_dek).await);
                }
            }
        });
    }
}

async fn generate(client: &aws_sdk_kms::Client, s: &KmsSettings) -> Result<DataKey, KmsError> {
    let out = client
        .generate_data_key()
        .key_id(&s.cmk_id)
        .number_of_bytes(s.number_of_bytes)
        .send()
        .await
        .map_err(|e| kms_error("GenerateDataKey", e))?;
    match (out.plaintext(), out.ciphertext_blob()) {
        (Some(plain), Some(blob)) => Ok((plain.as_ref().to_vec(), blob.as_ref().to_vec())),
        _ => Err(KmsError::Refused("GenerateDataKey answered without a key".into())),
    }
}

async fn decrypt(client: &aws_sdk_kms::Client, s: &KmsSettings, enc_dek: Vec<u8>) -> Result<Vec<u8>, KmsError> {
    let out = client
        .decrypt()
        .key_id(&s.cmk_id)
        .ciphertext_blob(Blob::new(enc_dek))
        .send()
        .await
        .map_err(|e| kms_error("Decrypt", e))?;
    out.plaintext()
        .map(|p| p.as_ref().to_vec())
        .ok_or_else(|| KmsError::Refused("Decrypt answered without a key".into()))
}
