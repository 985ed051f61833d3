//! `RouteTable`: how each resource module hands its routes to the merged router.

use crate::app::AppState;
use axum::routing::MethodRouter;
use axum::Router;

/// A router and the templates of its routes. Requests are timed and counted outside the
/// router (see [`super::Api`]), which learns a request's route template from this table: every
/// route is added through [`RouteTable::route`], so the two cannot disagree.
pub(crate) struct RouteTable {
    router: Router<AppState>,
    templates: Vec<&'static str>,
}

impl RouteTable {
    pub(crate) fn new() -> RouteTable {
        RouteTable { router: Router::new(), templates: Vec::new() }
    }

    pub(crate) fn route(mut self, template: &'static str, methods: MethodRouter<AppState>) -> RouteTable {
        self.router = self.router.route(template, methods);
        self.templates.push(template);
        self
    }

    pub(crate) fn merge(mut self, other: RouteTable) -> RouteTable {
        self.router = self.router.merge(other.router);
        self.templates.extend(other.templates);
        self
    }

    /// Applies `layers` (route layers: authentication, guards) to the routes so far.
    pub(crate) fn layered(mut self, layers: impl FnOnce(Router<AppState>) -> Router<AppState>) -> RouteTable {
        self.router = layers(self.router);
        self
    }

    /// The router and its route templates, in the order the routes were added.
    pub(crate) fn into_parts(self) -> (Router<AppState>, Vec<&'static str>) {
        (self.router, self.templates)
    }
}
