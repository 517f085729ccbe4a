from trafficgen.cli import main

main()
