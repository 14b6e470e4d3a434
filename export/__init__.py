"""reftok_deploy.export"""
