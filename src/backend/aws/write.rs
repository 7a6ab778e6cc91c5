//! Writing values (`put`, `migrate`): Secrets Manager `PutSecretValue` (or `CreateSecret` for a
//! new secret) with a client request token, so that the SDK's retries of one write make one
//! version; Parameter Store `PutParameter` (a new parameter is a SecureString; an existing one
//! keeps its type). With `key`, the JSON object there is read and one field set.

use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
use futures_util::future::BoxFuture;
use secrecy::ExposeSecret;
use secrecy::zeroize::Zeroizing;
use tokio::time::Instant;

use super::secretsmanager::SecretsManager;
use super::ssm::Ssm;
use super::{explain, within};
use crate::backend::{Put, WriteValue, Written, check_create_only};
use crate::secret::SecretError;

/// What a write that has not finished by its deadline says (the SDK cancels it).
const LATE: &str = "AWS did not complete the write before the deadline (--timeout)";

/// The value to write: the whole value, or the current JSON with `key`'s field set.
fn new_value(current: Option<&str>, put: &Put) -> Result<Zeroizing<String>, SecretError> {
    match &put.key {
        Some(key) => crate::secret::set_field(current, key, &put.value),
        None => Ok(Zeroizing::new(put.value.expose_secret().to_owned())),
    }
}

/// An idempotency token for one write (Secrets Manager wants 32 to 64 characters).
fn request_token() -> String {
    format!(
        "secret-run-{:016x}{:016x}",
        fastrand::u64(..),
        fastrand::u64(..)
    )
}

impl WriteValue for SecretsManager {
    fn put<'a>(
        &'a self,
        put: &'a Put,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Written, SecretError>> {
        Box::pin(within(deadline, LATE, self.write(put)))
    }
}

impl SecretsManager {
    async fn write(&self, put: &Put) -> Result<Written, SecretError> {
        let client = self.client().await?;
        let region = self.region();
        let target = format!("secret `{}`", put.path);
        let current = match client.get_secret_value().secret_id(&put.path).send().await {
            Ok(out) => Some(Zeroizing::new(
                out.secret_string().unwrap_or_default().to_owned(),
            )),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                None
            }
            Err(e) => {
                return Err(explain(
                    &e,
                    "secretsmanager:GetSecretValue",
                    &region,
                    &target,
                ));
            }
        };
        check_create_only(put, current.is_some(), &format!("{target} in {region}"))?;
        let value = new_value(current.as_deref().map(String::as_str), put)?;
        let token = request_token();
        let version = if current.is_some() {
            client
                .put_secret_value()
                .secret_id(&put.path)
                .secret_string(value.as_str())
                .client_request_token(&token)
                .send()
                .await
                .map_err(|e| explain(&e, "secretsmanager:PutSecretValue", &region, &target))?
                .version_id
        } else {
            client
                .create_secret()
                .name(&put.path)
                .secret_string(value.as_str())
                .client_request_token(&token)
                .send()
                .await
                .map_err(|e| explain(&e, "secretsmanager:CreateSecret", &region, &target))?
                .version_id
        };
        Ok(Written { version })
    }
}

impl WriteValue for Ssm {
    fn put<'a>(
        &'a self,
        put: &'a Put,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Written, SecretError>> {
        Box::pin(within(deadline, LATE, self.write(put)))
    }
}

impl Ssm {
    async fn write(&self, put: &Put) -> Result<Written, SecretError> {
        use aws_sdk_ssm::types::ParameterType;
        let client = self.client().await?;
        let region = self.region();
        let target = format!("parameter `{}`", put.path);
        let current = match client
            .get_parameter()
            .name(&put.path)
            .with_decryption(true)
            .send()
            .await
        {
            Ok(out) => out.parameter.map(|p| {
                let kind = p.r#type().cloned();
                (Zeroizing::new(p.value.unwrap_or_default()), kind)
            }),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_parameter_not_found()) =>
            {
                None
            }
            Err(e) => return Err(explain(&e, "ssm:GetParameter", &region, &target)),
        };
        check_create_only(put, current.is_some(), &format!("{target} in {region}"))?;
        let value = new_value(current.as_ref().map(|(v, _)| v.as_str()), put)?;
        let kind = current
            .as_ref()
            .and_then(|(_, k)| k.clone())
            .unwrap_or(ParameterType::SecureString);
        let out = client
            .put_parameter()
            .name(&put.path)
            .value(value.as_str())
            .r#type(kind)
            .overwrite(current.is_some())
            .send()
            .await
            .map_err(|e| {
                if e.as_service_error().is_some_and(|s| s.code() == Some("ParameterAlreadyExists")) {
                    SecretError::new(
                        crate::secret::ErrorKind::Conflict,
                        format!("{target} was created by another writer meanwhile; read it again and retry"),
                    )
                } else {
                    explain(&e, "ssm:PutParameter", &region, &target)
                }
            })?;
        Ok(Written {
            version: Some(out.version.to_string()),
        })
    }
}

/// Secrets Manager's own staging labels: the new version carries AWSPENDING (reads still get
/// AWSCURRENT); promoting moves AWSCURRENT to it (the old version gets AWSPREVIOUS); rolling
/// back takes AWSPENDING off it, and nothing else changed.
impl crate::backend::Rotate for SecretsManager {
    fn pending<'a>(
        &'a self,
        put: &'a Put,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<crate::backend::Pending, SecretError>> {
        Box::pin(async move {
            let run = async {
                let client = self.client().await?;
                let region = self.region();
                let target = format!("secret `{}`", put.path);
                let out = client
                    .get_secret_value()
                    .secret_id(&put.path)
                    .send()
                    .await
                    .map_err(|e| explain(&e, "secretsmanager:GetSecretValue", &region, &target))?;
                let current = Zeroizing::new(out.secret_string().unwrap_or_default().to_owned());
                let value = new_value(Some(current.as_str()), put)?;
                let written = client
                    .put_secret_value()
                    .secret_id(&put.path)
                    .secret_string(value.as_str())
                    .version_stages("AWSPENDING")
                    .client_request_token(request_token())
                    .send()
                    .await
                    .map_err(|e| explain(&e, "secretsmanager:PutSecretValue", &region, &target))?;
                Ok(crate::backend::Pending {
                    path: put.path.clone(),
                    new: written.version_id.unwrap_or_default(),
                    previous: out.version_id,
                    visible: false,
                    restore: None,
                })
            };
            within(deadline, LATE, run).await
        })
    }

    fn promote<'a>(
        &'a self,
        pending: &'a crate::backend::Pending,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<(), SecretError>> {
        Box::pin(self.move_stage(pending, true, deadline))
    }

    fn roll_back<'a>(
        &'a self,
        pending: &'a crate::backend::Pending,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<(), SecretError>> {
        Box::pin(self.move_stage(pending, false, deadline))
    }
}

impl SecretsManager {
    /// `promote`: AWSCURRENT to the new version; both ways, AWSPENDING off it.
    async fn move_stage(
        &self,
        pending: &crate::backend::Pending,
        promote: bool,
        deadline: Instant,
    ) -> Result<(), SecretError> {
        let run = async {
            let client = self.client().await?;
            let region = self.region();
            let target = format!("secret `{}`", pending.path);
            let action = "secretsmanager:UpdateSecretVersionStage";
            if promote {
                let mut call = client
                    .update_secret_version_stage()
                    .secret_id(&pending.path)
                    .version_stage("AWSCURRENT")
                    .move_to_version_id(&pending.new);
                if let Some(previous) = &pending.previous {
                    call = call.remove_from_version_id(previous);
                }
                call.send()
                    .await
                    .map_err(|e| explain(&e, action, &region, &target))?;
            }
            client
                .update_secret_version_stage()
                .secret_id(&pending.path)
                .version_stage("AWSPENDING")
                .remove_from_version_id(&pending.new)
                .send()
                .await
                .map_err(|e| explain(&e, action, &region, &target))?;
            Ok(())
        };
        within(deadline, LATE, run).await
    }
}
