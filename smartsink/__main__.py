from smartsink.cli import main

main()
