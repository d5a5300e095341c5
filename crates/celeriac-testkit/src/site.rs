//! Where an interop scenario runs: a broker and a result backend, so one
//! scenario function runs on Redis and on RabbitMQ alike.

use crate::rabbit_server;
use crate::redis_server::RedisServer;

/// A broker URL and a result-backend URL (Python's `broker=` and
/// `backend=`, celeriac's `--broker` and `--result-backend`), and the
/// private servers behind them.
#[derive(Debug)]
pub struct Site {
    /// The broker URL.
    pub broker: String,
    /// The result backend URL.
    pub backend: String,
    /// The private Redis, if this site started one.
    pub redis: Option<RedisServer>,
}

impl Site {
    /// A private `redis-server` as broker and backend.
    pub fn redis() -> Site {
        let redis = RedisServer::start();
        let url = redis.url("");
        Site {
            broker: url.clone(),
            backend: url,
            redis: Some(redis),
        }
    }

    /// `url` (a database of a shared Redis) as broker and backend.
    pub fn shared_redis(url: String) -> Site {
        Site {
            broker: url.clone(),
            backend: url,
            redis: None,
        }
    }

    /// A vhost of the private RabbitMQ node as broker, and a private
    /// `redis-server` for results; `None` (skipped) where RabbitMQ cannot
    /// run.
    pub fn amqp() -> Option<Site> {
        if !rabbit_server::available() {
            return None;
        }
        let redis = RedisServer::start();
        Some(Site {
            broker: rabbit_server::vhost_url(),
            backend: redis.url(""),
            redis: Some(redis),
        })
    }

    /// A vhost of the private RabbitMQ node as broker, and Celery's
    /// `rpc://` result backend (results as messages to the client's reply
    /// queue); `None` (skipped) where RabbitMQ cannot run.
    pub fn amqp_rpc() -> Option<Site> {
        if !rabbit_server::available() {
            return None;
        }
        Some(Site {
            broker: rabbit_server::vhost_url(),
            backend: "rpc://".to_string(),
            redis: None,
        })
    }

    /// Whether the broker is Redis.
    pub fn is_redis(&self) -> bool {
        self.broker.starts_with("redis")
    }

    /// kombu's transport name of the broker (`redis`, `amqp`).
    pub fn transport(&self) -> &str {
        self.broker.split("://").next().unwrap_or_default()
    }

    /// The broker's TCP port.
    pub fn broker_port(&self) -> u16 {
        let rest = self.broker.split_once("://").map_or("", |(_, r)| r);
        let host = rest.split('/').next().unwrap_or_default();
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        host.rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(0)
    }

    /// `--broker B --result-backend R`, for the `celeriac` command.
    pub fn conn(&self) -> [&str; 4] {
        ["--broker", &self.broker, "--result-backend", &self.backend]
    }
}

/// Runs each scenario `name(python: &str, site: &Site)` of the calling test
/// file on a private Redis (test `redis::name`) and on RabbitMQ with
/// results in a private Redis (test `amqp::name`), with the interop Python
/// of [`interop_python`](crate::python::interop_python); each is skipped
/// where its environment is missing.
#[macro_export]
macro_rules! python_scenarios_on_redis_and_amqp {
    ($($name:ident),* $(,)?) => {
        mod redis {
            $(
                #[test]
                fn $name() {
                    let Some(python) = $crate::python::interop_python() else { return };
                    super::$name(&python, &$crate::site::Site::redis());
                }
            )*
        }
        mod amqp {
            $(
                #[test]
                fn $name() {
                    let Some(python) = $crate::python::interop_python() else { return };
                    let Some(site) = $crate::site::Site::amqp() else { return };
                    super::$name(&python, &site);
                }
            )*
        }
    };
}
