"""reftok_deploy.runtimes"""
