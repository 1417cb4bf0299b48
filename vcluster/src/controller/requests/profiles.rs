//! The checks of the configuration database's requests (roles, profiles, attributes,
//! groups): names, sizes (`model::profiles`' bounds) and templates that parse. Whether a
//! named role, node or scope exists is the handlers' to find out.

use super::{check_name, free_text};
use crate::api_error::ApiError;
use crate::model::{
    Attribute, CreateGroup, MAX_FILE_MODE, MAX_FILE_PATH_BYTES, MAX_PACKAGE_BYTES, MAX_ROLE_FILES,
    MAX_ROLE_PACKAGES, MAX_ROLES_PER_LIST, MAX_TEMPLATE_BYTES, ProfileSpec, RoleSpec,
    attribute_key_error, attribute_value_error,
};
use crate::provision::profile::{RenderError, TemplatePart, check_role};

fn template_size(field: &str, text: &str) -> Result<(), ApiError> {
    if text.len() > MAX_TEMPLATE_BYTES {
        return Err(ApiError::invalid(
            field,
            format!(
                "{field} is {} bytes; at most {MAX_TEMPLATE_BYTES} (256 KiB)",
                text.len()
            ),
        ));
    }
    Ok(())
}

/// A list of role names (of a profile, a group, a node): each a valid name, each once.
pub fn check_role_list(field: &str, roles: &[String]) -> Result<(), ApiError> {
    if roles.len() > MAX_ROLES_PER_LIST {
        return Err(ApiError::invalid(
            field,
            format!("at most {MAX_ROLES_PER_LIST} roles; got {}", roles.len()),
        ));
    }
    for (i, r) in roles.iter().enumerate() {
        check_name(&format!("{field}[{i}]"), r)?;
        if roles[..i].contains(r) {
            return Err(ApiError::invalid(
                &format!("{field}[{i}]"),
                format!("role {r} is listed twice"),
            ));
        }
    }
    Ok(())
}

impl RoleSpec {
    pub fn validate(&self) -> Result<(), ApiError> {
        check_name("name", &self.name)?;
        free_text("description", &self.description)?;
        if self.packages.len() > MAX_ROLE_PACKAGES {
            return Err(ApiError::invalid(
                "packages",
                format!(
                    "at most {MAX_ROLE_PACKAGES} package entries; got {}",
                    self.packages.len()
                ),
            ));
        }
        for (i, p) in self.packages.iter().enumerate() {
            if p.len() > MAX_PACKAGE_BYTES {
                return Err(ApiError::invalid(
                    &format!("packages[{i}]"),
                    format!(
                        "a package entry is at most {MAX_PACKAGE_BYTES} bytes; got {}",
                        p.len()
                    ),
                ));
            }
        }
        if self.files.len() > MAX_ROLE_FILES {
            return Err(ApiError::invalid(
                "files",
                format!("at most {MAX_ROLE_FILES} files; got {}", self.files.len()),
            ));
        }
        for (i, f) in self.files.iter().enumerate() {
            let field = format!("files[{i}].path");
            let clean = f.path.starts_with('/')
                && f.path.len() <= MAX_FILE_PATH_BYTES
                && !f.path.contains('\0')
                && !f.path.ends_with('/')
                && !f.path.split('/').any(|c| c == ".." || c == ".");
            if !clean {
                return Err(ApiError::invalid(
                    &field,
                    format!(
                        "file path {:?} must be absolute, at most {MAX_FILE_PATH_BYTES} bytes, \
                         name a file (no trailing '/'), without '.' or '..' components",
                        f.path
                    ),
                ));
            }
            if self.files[..i].iter().any(|o| o.path == f.path) {
                return Err(ApiError::invalid(
                    &field,
                    format!("role {} writes {} twice", self.name, f.path),
                ));
            }
            if f.mode > MAX_FILE_MODE {
                return Err(ApiError::invalid(
                    &format!("files[{i}].mode"),
                    format!("mode {:#o} is more than 0o7777", f.mode),
                ));
            }
            template_size(&format!("files[{i}].content"), &f.content)?;
        }
        template_size("post", &self.post)?;
        check_role(self).map_err(|e| {
            let field = match &e {
                RenderError::Template { template, .. }
                | RenderError::Undefined { template, .. } => match &template.part {
                    TemplatePart::Package(i) => format!("packages[{i}]"),
                    TemplatePart::File(path) => {
                        let i = self.files.iter().position(|f| &f.path == path);
                        format!("files[{}].content", i.unwrap_or_default())
                    }
                    TemplatePart::Post => "post".to_string(),
                },
                _ => "name".to_string(),
            };
            ApiError::invalid(&field, e.to_string())
        })
    }
}

impl ProfileSpec {
    pub fn validate(&self) -> Result<(), ApiError> {
        check_name("name", &self.name)?;
        free_text("description", &self.description)?;
        check_role_list("roles", &self.roles)
    }
}

impl Attribute {
    pub fn validate(&self) -> Result<(), ApiError> {
        if let Some(e) = attribute_key_error(&self.key) {
            return Err(ApiError::invalid("key", e));
        }
        if let Some(e) = attribute_value_error(&self.value) {
            return Err(ApiError::invalid("value", e));
        }
        Ok(())
    }
}

impl CreateGroup {
    pub fn validate(&self) -> Result<(), ApiError> {
        check_name("name", &self.name)?;
        check_role_list("roles", &self.roles)
    }
}
