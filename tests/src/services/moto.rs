//! moto's S3 server (PyPI `moto[server]`).
//!
//! By default moto accepts any signed request without checking the
//! signature. After [`Moto::enforce_auth`] (moto's `/moto-api/reset-auth`
//! set to 0 unauthenticated actions), it accepts only access keys created
//! in its IAM and recomputes every SigV4 signature: a wrong secret gets 403
//! `SignatureDoesNotMatch`, an unknown key 403 `InvalidAccessKeyId`, and an
//! unsigned request 403.

use super::{Daemon, curl, curl_status, venv_python};
use crate::command;
use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::Command;

/// The signing credentials used before auth is enforced; moto ignores them.
const SETUP_KEY: (&str, &str) = ("test", "test");

/// An IAM access key created in moto.
#[derive(Clone, Debug)]
pub struct AwsKey {
    /// `AWS_ACCESS_KEY_ID`.
    pub id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret: String,
}

/// A moto server; stopped on drop.
pub struct Moto {
    daemon: Daemon,
}

impl Moto {
    /// Starts moto on a free port of 127.0.0.1.
    pub fn start() -> Result<Moto> {
        let python = venv_python()?;
        let daemon = Daemon::start("moto", "/moto-api/", false, |port, _| {
            let mut cmd = Command::new(&python);
            cmd.args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
                .arg(port.to_string());
            Ok(cmd)
        })?;
        Ok(Moto { daemon })
    }

    /// `S3_ENDPOINT`: `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        self.daemon.url()
    }

    /// Creates `bucket` (3 to 63 lowercase characters).
    pub fn create_bucket(&self, bucket: &str) -> Result<()> {
        curl(["-X", "PUT", &format!("{}/{bucket}", self.endpoint())])
            .with_context(|| format!("cannot create the S3 bucket {bucket} in moto"))?;
        Ok(())
    }

    /// Uploads the file `source` as `bucket/key` (path-style, unsigned:
    /// only possible before [`Moto::enforce_auth`]).
    pub fn put_object(&self, bucket: &str, key: &str, source: &Path) -> Result<()> {
        let url = format!("{}/{bucket}/{key}", self.endpoint());
        let mut data = std::ffi::OsString::from("@");
        data.push(source);
        // A form content type would make moto store an empty object.
        curl([
            "-X".into(),
            "PUT".into(),
            "-H".into(),
            "Content-Type: application/octet-stream".into(),
            "--data-binary".into(),
            data,
            url.clone().into(),
        ])
        .with_context(|| format!("cannot upload {} to {url}", source.display()))?;
        Ok(())
    }

    /// A GET of `bucket/object` signed (SigV4, by curl) with `key`: the
    /// status and the body. Without a key, the GET is unsigned, which moto
    /// always refuses.
    pub fn get_object(
        &self,
        key: Option<&AwsKey>,
        bucket: &str,
        object: &str,
    ) -> Result<(u16, Vec<u8>)> {
        let url = format!("{}/{bucket}/{object}", self.endpoint());
        match key {
            // moto checks the payload hash only through this header, which
            // S3 requires anyway.
            Some(key) => curl_status([
                "-H",
                "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "--aws-sigv4",
                "aws:amz:us-east-1:s3",
                "--user",
                &format!("{}:{}", key.id, key.secret),
                &url,
            ]),
            None => curl_status([url]),
        }
    }

    /// The credentials moto takes (without checking them) until
    /// [`Moto::enforce_auth`].
    pub fn any_key(&self) -> AwsKey {
        AwsKey {
            id: SETUP_KEY.0.to_owned(),
            secret: SETUP_KEY.1.to_owned(),
        }
    }

    /// Creates an IAM user allowed everything and returns a new access key
    /// of it: the only kind of key moto accepts once auth is enforced.
    pub fn create_access_key(&self) -> Result<AwsKey> {
        let script = "import sys, boto3\n\
             iam = boto3.client('iam', endpoint_url=sys.argv[1], region_name='us-east-1', \
             aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3])\n\
             iam.create_user(UserName='kiln')\n\
             iam.put_user_policy(UserName='kiln', PolicyName='all', PolicyDocument=\
             '{\"Version\":\"2012-10-17\",\"Statement\":[{\"Effect\":\"Allow\",\"Action\":\"*\",\"Resource\":\"*\"}]}')\n\
             key = iam.create_access_key(UserName='kiln')['AccessKey']\n\
             print(key['AccessKeyId'], key['SecretAccessKey'])\n";
        let out = command::run(Command::new(venv_python()?).args([
            "-c",
            script,
            &self.endpoint(),
            SETUP_KEY.0,
            SETUP_KEY.1,
        ]))
        .context("cannot create an IAM access key in moto")?;
        let out = String::from_utf8(out)?;
        match out.split_whitespace().collect::<Vec<_>>()[..] {
            [id, secret] => Ok(AwsKey {
                id: id.to_owned(),
                secret: secret.to_owned(),
            }),
            _ => bail!("moto's CreateAccessKey printed {out:?}"),
        }
    }

    /// From now on, moto accepts only requests signed (correctly) with a key
    /// from [`Moto::create_access_key`].
    pub fn enforce_auth(&self) -> Result<()> {
        // moto reads the count from the raw body: a form content type
        // would hide it.
        curl([
            "-X",
            "POST",
            "-H",
            "Content-Type: text/plain",
            "--data-binary",
            "0",
            &format!("{}/moto-api/reset-auth", self.endpoint()),
        ])
        .context("cannot turn on moto's IAM authentication")?;
        Ok(())
    }
}
