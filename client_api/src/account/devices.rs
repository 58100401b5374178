use ruma::api::client::device::{
    Device, delete_device, delete_devices, get_device, get_devices, update_device,
};
use ruma::{MilliSecondsSinceUnixEpoch, OwnedDeviceId, UInt};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Ruma;

fn device(id: String, rec: hearth_core::accounts::DeviceInfo) -> Device {
    let mut d = Device::new(OwnedDeviceId::from(id));
    d.display_name = rec.display_name;
    d.last_seen_ip = rec.last_seen_ip;
    d.last_seen_ts = rec
        .last_seen_ts
        .and_then(UInt::new)
        .map(MilliSecondsSinceUnixEpoch);
    d
}

pub async fn list(
    state: AppState,
    req: Ruma<get_devices::v3::Request>,
) -> ApiResult<get_devices::v3::Response> {
    let devices = state.core.accounts.devices(&req.session().user_id)?;
    Ok(get_devices::v3::Response::new(
        devices.into_iter().map(|(id, d)| device(id, d)).collect(),
    ))
}

pub async fn get(
    state: AppState,
    req: Ruma<get_device::v3::Request>,
) -> ApiResult<get_device::v3::Response> {
    let id = req.body.device_id.to_string();
    let d = state
        .core
        .accounts
        .device(&req.session().user_id, &id)?
        .ok_or_else(|| ApiError::not_found("Device not found"))?;
    Ok(get_device::v3::Response::new(device(id, d)))
}

pub async fn update(
    state: AppState,
    req: Ruma<update_device::v3::Request>,
) -> ApiResult<update_device::v3::Response> {
    let user = &req.session().user_id;
    state
        .core
        .accounts
        .rename_device(
            user,
            req.body.device_id.as_str(),
            req.body.display_name.clone(),
        )
        .await?;
    Ok(update_device::v3::Response::new())
}

pub async fn delete(
    state: AppState,
    req: Ruma<delete_device::v3::Request>,
) -> ApiResult<delete_device::v3::Response> {
    let user = req.session().user_id.clone();
    if state
        .core
        .accounts
        .device(&user, req.body.device_id.as_str())?
        .is_none()
    {
        return Err(ApiError::not_found("Device not found"));
    }
    state
        .uia
        .confirm_password(
            &state,
            req.body.auth.as_ref(),
            &user,
            &format!("delete device {}", req.body.device_id),
        )
        .await?;
    state
        .core
        .accounts
        .delete_devices(&user, &[req.body.device_id.to_string()])
        .await?;
    Ok(delete_device::v3::Response::new())
}

pub async fn delete_many(
    state: AppState,
    req: Ruma<delete_devices::v3::Request>,
) -> ApiResult<delete_devices::v3::Response> {
    let user = req.session().user_id.clone();
    state
        .uia
        .confirm_password(&state, req.body.auth.as_ref(), &user, "delete devices")
        .await?;
    let ids: Vec<String> = req.body.devices.iter().map(|d| d.to_string()).collect();
    state.core.accounts.delete_devices(&user, &ids).await?;
    Ok(delete_devices::v3::Response::new())
}
