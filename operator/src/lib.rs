//! Chorus operator: reconciles `ChatTenant` resources into per-tenant databases,
//! chat-runtime Deployments and the objects around them.
