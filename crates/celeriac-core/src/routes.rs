//! Task routes: which queue a task goes to when its call names none, by
//! task name or glob (`*` matches any run of characters), like Celery's
//! `task_routes`.

/// An ordered list of `(pattern, queue)` routes; the first match wins.
///
/// # Examples
///
/// ```
/// use celeriac_core::routes::Routes;
/// let routes = Routes::new().route("images.*", "media").route("celeriac.fib", "cpu");
/// assert_eq!(routes.queue_for("images.resize"), Some("media"));
/// assert_eq!(routes.queue_for("celeriac.fib"), Some("cpu"));
/// assert_eq!(routes.queue_for("celeriac.add"), None);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Routes {
    rules: Vec<(String, String)>,
}

impl Routes {
    /// No routes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a route; earlier routes take precedence.
    pub fn route(mut self, pattern: impl Into<String>, queue: impl Into<String>) -> Self {
        self.rules.push((pattern.into(), queue.into()));
        self
    }

    /// The queue of the first route matching `task`.
    pub fn queue_for(&self, task: &str) -> Option<&str> {
        self.rules
            .iter()
            .find(|(p, _)| glob_match(p, task))
            .map(|(_, q)| q.as_str())
    }

    /// Every queue a route names, in order, without repeats.
    pub fn queues(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for (_, q) in &self.rules {
            if !out.contains(&q.as_str()) {
                out.push(q);
            }
        }
        out
    }
}

/// `*` matches any run of characters (including none); everything else
/// matches itself.
fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("*", ""));
        assert!(glob_match("a.*", "a.b.c"));
        assert!(glob_match("*.resize", "images.resize"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b", "ac"));
        assert!(!glob_match("a.b", "a.bc"));
        assert!(glob_match("exact", "exact"));
    }
}
