"""reftok_deploy.calibration"""
